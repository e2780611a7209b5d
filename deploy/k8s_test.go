package deploy_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// account is the NATS account of deploy/nats/accounts.conf that the
// services and KEDA use.
const account = "CASCADE"

// object is one Kubernetes manifest, as parsed.
type object struct {
	file string
	doc  map[string]any
}

func (o object) kind() string { return str(o.doc, "kind") }
func (o object) name() string { return str(o.doc, "metadata", "name") }

// get walks maps by key and lists by index ("0").
func get(v any, path ...string) any {
	for _, p := range path {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func str(v any, path ...string) string {
	s, _ := get(v, path...).(string)
	return s
}

func list(v any, path ...string) []any {
	l, _ := get(v, path...).([]any)
	return l
}

// manifests parses every document of the kustomization's resources.
func manifests(t *testing.T) (kustomization map[string]any, objs []object) {
	t.Helper()
	readYAML(t, "k8s/kustomization.yaml", &kustomization)
	for _, r := range list(kustomization, "resources") {
		objs = append(objs, parseDocs(t, filepath.Join("k8s", r.(string)))...)
	}
	return kustomization, objs
}

func parseDocs(t *testing.T, file string) []object {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []object
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if doc != nil {
			out = append(out, object{file: file, doc: doc})
		}
	}
	return out
}

// imageMNIST is where deploy/Dockerfile puts the MNIST plan and models.
const imageMNIST = "/usr/local/share/cascadeserve/mnist"

// TestKubernetesManifestsParse checks every manifest: known kinds with
// their required fields, no namespace (kustomization.yaml places them),
// selectors that match their pod templates, Secrets and ConfigMaps that
// exist, and services configured for the MNIST pipeline.
func TestKubernetesManifestsParse(t *testing.T) {
	k, objs := manifests(t)
	files, _ := filepath.Glob("k8s/*.yaml")
	for _, f := range files {
		base := filepath.Base(f)
		if base != "kustomization.yaml" && base != "secret.example.yaml" && !slices.Contains(list(k, "resources"), any(base)) {
			t.Errorf("%s is not a resource of kustomization.yaml", f)
		}
	}
	var secret map[string]any
	readYAML(t, "k8s/secret.example.yaml", &secret)
	secretName := str(secret, "metadata", "name")
	generated := map[string]bool{}
	for _, g := range list(k, "configMapGenerator") {
		generated[str(g, "name")] = true
		for _, f := range list(g, "files") {
			if _, err := os.Stat(filepath.Join("k8s", f.(string))); err != nil {
				t.Errorf("configMapGenerator %s: %v", str(g, "name"), err)
			}
		}
	}
	p, err := mnist.Plan()
	if err != nil {
		t.Fatal(err)
	}

	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.kind()]++
		where := o.file + ": " + o.kind() + " " + o.name()
		if str(o.doc, "apiVersion") == "" || o.kind() == "" || o.name() == "" {
			t.Errorf("%s: apiVersion, kind or metadata.name missing", where)
		}
		if get(o.doc, "metadata", "namespace") != nil {
			t.Errorf("%s names a namespace; kustomization.yaml sets it", where)
		}
		switch o.kind() {
		case "Deployment", "StatefulSet":
			sel, _ := get(o.doc, "spec", "selector", "matchLabels").(map[string]any)
			labels, _ := get(o.doc, "spec", "template", "metadata", "labels").(map[string]any)
			if len(sel) == 0 {
				t.Errorf("%s: no selector", where)
			}
			for key, v := range sel {
				if labels[key] != v {
					t.Errorf("%s: selector %s=%v does not match the pod template", where, key, v)
				}
			}
			containers := list(o.doc, "spec", "template", "spec", "containers")
			if len(containers) == 0 {
				t.Errorf("%s: no containers", where)
			}
			for _, c := range containers {
				if str(c, "image") == "" || str(c, "name") == "" {
					t.Errorf("%s: a container without name or image", where)
				}
				if get(c, "readinessProbe") == nil || get(c, "livenessProbe") == nil {
					t.Errorf("%s: container %s lacks a readiness or liveness probe", where, str(c, "name"))
				}
				env := map[string]string{}
				for _, e := range list(c, "env") {
					env[str(e, "name")] = str(e, "value")
					if ref := get(e, "valueFrom", "secretKeyRef"); ref != nil {
						if str(ref, "name") != secretName || get(secret, "stringData", str(ref, "key")) == nil {
							t.Errorf("%s: %s reads secret %s key %s, not in secret.example.yaml", where, str(e, "name"), str(ref, "name"), str(ref, "key"))
						}
					}
				}
				if strings.HasPrefix(str(c, "image"), "cascadeserve") && env["CASCADE_PIPELINE"] != p.Pipeline {
					t.Errorf("%s: CASCADE_PIPELINE %q, want %q", where, env["CASCADE_PIPELINE"], p.Pipeline)
				}
				// The service binaries serve the plan and models the image
				// ships as files (deploy/Dockerfile).
				for bin, want := range map[string][2]string{
					"controller":   {"CASCADE_PLAN", imageMNIST + "/plan.json"},
					"stage-worker": {"CASCADE_MODEL_DIR", imageMNIST},
				} {
					if slices.Contains(list(c, "command"), any("/usr/local/bin/"+bin)) && env[want[0]] != want[1] {
						t.Errorf("%s: %s %q, want %q", where, want[0], env[want[0]], want[1])
					}
				}
			}
			for _, v := range list(o.doc, "spec", "template", "spec", "volumes") {
				if cm := str(v, "configMap", "name"); cm != "" && !generated[cm] {
					t.Errorf("%s: volume of ConfigMap %s, which kustomization.yaml does not generate", where, cm)
				}
			}
		case "Service":
			if get(o.doc, "spec", "selector") == nil || len(list(o.doc, "spec", "ports")) == 0 {
				t.Errorf("%s: no selector or ports", where)
			}
		case "ScaledObject":
			if str(o.doc, "apiVersion") != "keda.sh/v1alpha1" || str(o.doc, "spec", "scaleTargetRef", "name") == "" {
				t.Errorf("%s: not a keda.sh/v1alpha1 ScaledObject with a scaleTargetRef", where)
			}
		default:
			t.Errorf("%s: unexpected kind", where)
		}
	}
	for _, want := range []string{"StatefulSet", "Deployment", "Service", "ScaledObject"} {
		if kinds[want] == 0 {
			t.Errorf("no %s among the manifests", want)
		}
	}
}

// TestScaledObjectsWatchTheTopologysConsumers: each model the MNIST plan's
// gears use has exactly one nats-jetstream trigger, on the stream and
// durable consumer the topology creates for it (wire.ModelStream,
// wire.ModelConsumer) in account CASCADE, and it scales a Deployment that
// hosts the model.
func TestScaledObjectsWatchTheTopologysConsumers(t *testing.T) {
	_, objs := manifests(t)
	p, err := mnist.Plan()
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[string][]string{} // Deployment → CASCADE_WORKER_MODELS
	for _, o := range objs {
		if o.kind() != "Deployment" {
			continue
		}
		for _, c := range list(o.doc, "spec", "template", "spec", "containers") {
			for _, e := range list(c, "env") {
				if str(e, "name") == "CASCADE_WORKER_MODELS" {
					hosts[o.name()] = strings.Split(str(e, "value"), ",")
				}
			}
		}
	}
	if len(hosts) == 0 {
		t.Fatal("no stage-worker Deployment sets CASCADE_WORKER_MODELS")
	}
	watched := map[string]int{}
	for _, o := range objs {
		if o.kind() != "ScaledObject" {
			continue
		}
		target := str(o.doc, "spec", "scaleTargetRef", "name")
		hosted, ok := hosts[target]
		if !ok {
			t.Errorf("ScaledObject %s scales %s, not a stage-worker Deployment", o.name(), target)
		}
		for _, tr := range list(o.doc, "spec", "triggers") {
			if str(tr, "type") != "nats-jetstream" {
				t.Errorf("ScaledObject %s: trigger type %q", o.name(), str(tr, "type"))
				continue
			}
			md := get(tr, "metadata")
			model := str(md, "consumer")
			watched[model]++
			if got, want := str(md, "stream"), wire.ModelStream(p.Pipeline, model); got != want {
				t.Errorf("ScaledObject %s: consumer %s on stream %s, want %s", o.name(), model, got, want)
			}
			if wire.ModelConsumer(model) != model {
				t.Errorf("the topology names model %s's consumer %s", model, wire.ModelConsumer(model))
			}
			if got := str(md, "account"); got != account {
				t.Errorf("ScaledObject %s: account %q, want %s", o.name(), got, account)
			}
			if n, err := strconv.Atoi(str(md, "lagThreshold")); err != nil || n < 1 {
				t.Errorf("ScaledObject %s: lagThreshold %q", o.name(), str(md, "lagThreshold"))
			}
			if ep := str(md, "natsServerMonitoringEndpoint"); !strings.HasPrefix(ep, "nats.") || !strings.HasSuffix(ep, ":8222") {
				t.Errorf("ScaledObject %s: monitoring endpoint %q, want nats.<namespace>...:8222", o.name(), ep)
			}
			if !slices.Contains(hosted, model) {
				t.Errorf("ScaledObject %s scales %s on model %s, which it does not host (%v)", o.name(), target, model, hosted)
			}
		}
	}
	used := p.UsedModels()
	for _, m := range used {
		if watched[m] != 1 {
			t.Errorf("model %s has %d triggers, want 1", m, watched[m])
		}
	}
	for m := range watched {
		if !slices.Contains(used, m) {
			t.Errorf("a trigger watches %s, which no gear uses (no stream exists)", m)
		}
	}
	for d, models := range hosts {
		for _, m := range models {
			if !slices.Contains(used, m) {
				t.Errorf("Deployment %s hosts %s, which no gear of the MNIST plan uses", d, m)
			}
		}
	}
}

// TestKubernetesNATSConfig: the server config the StatefulSet mounts is
// accepted by the pinned nats-server, serves monitoring on 8222, has
// account CASCADE with JetStream, and its accounts.conf is the one of
// deploy/nats (kustomize only reads files under deploy/k8s).
func TestKubernetesNATSConfig(t *testing.T) {
	a, err := os.ReadFile("nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("k8s/nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("deploy/k8s/nats/accounts.conf differs from deploy/nats/accounts.conf: cp deploy/nats/accounts.conf deploy/k8s/nats/")
	}
	opts := loadK8sNATSConfig(t)
	if !opts.JetStream || opts.HTTPPort != 8222 || opts.MaxPayload < 8<<20 {
		t.Errorf("jetstream %v, monitoring port %d, max payload %d; want JetStream on, 8222, >= 8MB", opts.JetStream, opts.HTTPPort, opts.MaxPayload)
	}
	found := false
	for _, acc := range opts.Accounts {
		found = found || acc.Name == account
	}
	if !found {
		t.Errorf("no account %s in the Kubernetes nats-server config", account)
	}

	// nats-server refuses to start without a password variable that
	// accounts.conf reads: the nats container sets each one from a key of
	// the Secret (secret.example.yaml).
	var secret map[string]any
	readYAML(t, "k8s/secret.example.yaml", &secret)
	env := map[string]any{}
	_, objs := manifests(t)
	for _, o := range objs {
		if o.kind() != "StatefulSet" || o.name() != "nats" {
			continue
		}
		for _, c := range list(o.doc, "spec", "template", "spec", "containers") {
			for _, e := range list(c, "env") {
				env[str(e, "name")] = get(e, "valueFrom", "secretKeyRef")
			}
		}
	}
	for _, m := range regexp.MustCompile(`\$(CASCADE_[A-Z0-9_]+_PASSWORD)`).FindAllSubmatch(a, -1) {
		name := string(m[1])
		ref, ok := env[name].(map[string]any)
		if !ok {
			t.Errorf("the nats StatefulSet does not set %s from the Secret", name)
			continue
		}
		if str(ref, "name") != str(secret, "metadata", "name") || get(secret, "stringData", str(ref, "key")) == nil {
			t.Errorf("the nats StatefulSet sets %s from %s/%s, which secret.example.yaml lacks", name, str(ref, "name"), str(ref, "key"))
		}
	}
}

// loadK8sNATSConfig parses deploy/k8s/nats/nats.conf with test passwords.
func loadK8sNATSConfig(t *testing.T) *server.Options {
	t.Helper()
	for _, v := range []string{"CONTROLLER", "INGRESS", "WORKER", "PRODUCER", "BILLING", "SYS"} {
		t.Setenv("CASCADE_"+v+"_PASSWORD", strings.ToLower(v)+"-test")
	}
	t.Setenv("POD_NAME", "nats-0")
	opts, err := server.ProcessConfigFile("k8s/nats/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

// TestKustomizeBuilds renders the kustomization when kubectl is at hand:
// the ScaledObjects get the namespace in their monitoring endpoint.
func TestKustomizeBuilds(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not on PATH")
	}
	out := run(t, ".", kubectl, "kustomize", "k8s")
	var k map[string]any
	readYAML(t, "k8s/kustomization.yaml", &k)
	want := "natsServerMonitoringEndpoint: nats." + str(k, "namespace") + ".svc.cluster.local:8222"
	if n := strings.Count(out, want); n != len(mustPlanModels(t)) {
		t.Errorf("rendered %d endpoints %q, want one per used model", n, want)
	}
}

func mustPlanModels(t *testing.T) []string {
	t.Helper()
	p, err := mnist.Plan()
	if err != nil {
		t.Fatal(err)
	}
	return p.UsedModels()
}
