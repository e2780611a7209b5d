package system_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"

	"github.com/cascadeserve/cascadeserve/internal/controller"
	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/stageworker"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// composeFile is the subset of deploy/compose.yaml the test reads.
type composeFile struct {
	Services map[string]struct {
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
		Volumes     []string          `yaml:"volumes"`
		Deploy      struct {
			Replicas int `yaml:"replicas"`
		} `yaml:"deploy"`
		DependsOn map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		Healthcheck struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
}

// imageMNIST is where deploy/Dockerfile puts the MNIST plan and models,
// which compose.yaml points the controller and the workers at.
const imageMNIST = "/usr/local/share/cascadeserve/mnist"

// composeVar matches a variable reference of compose: ${VAR}, ${VAR:-default},
// ${VAR:?error} and the forms without the colon.
var composeVar = regexp.MustCompile(`\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}`)

// composePasswords are what the test sets the NATS passwords to: compose has
// no defaults for them (scripts/gen-nats-passwords.sh makes a set).
var composePasswords = map[string]string{
	"CASCADE_CONTROLLER_PASSWORD": "composeController", "CASCADE_INGRESS_PASSWORD": "composeIngress",
	"CASCADE_WORKER_PASSWORD": "composeWorker", "CASCADE_PRODUCER_PASSWORD": "composeProducer",
	"CASCADE_BILLING_PASSWORD": "composeBilling", "CASCADE_SYS_PASSWORD": "composeSys",
}

// interpolate replaces variable references as compose does, with the
// test's passwords; any other variable fails t.
func interpolate(t *testing.T, v string) string {
	t.Helper()
	return composeVar.ReplaceAllStringFunc(v, func(ref string) string {
		name := composeVar.FindStringSubmatch(ref)[1]
		pw, ok := composePasswords[name]
		if !ok {
			t.Fatalf("compose.yaml refers to %s, which the test does not set", name)
		}
		return pw
	})
}

// violations counts log records that carry a NATS permissions violation.
type violations struct {
	mu   sync.Mutex
	seen []string
}

func (v *violations) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (v *violations) WithAttrs([]slog.Attr) slog.Handler           { return v }
func (v *violations) WithGroup(string) slog.Handler                { return v }
func (v *violations) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if s := a.Value.String(); strings.Contains(strings.ToLower(s), "permissions violation") {
			v.mu.Lock()
			v.seen = append(v.seen, r.Message+": "+s)
			v.mu.Unlock()
		}
		return true
	})
	return nil
}

func (v *violations) list() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.seen)
}

func readCompose(t *testing.T) ([]byte, composeFile) {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(raw, &cf); err != nil {
		t.Fatalf("parse compose.yaml: %v", err)
	}
	return raw, cf
}

// TestComposeRequiresPasswordsAndPublishesOnLoopback checks
// deploy/compose.yaml's defaults for a public network: no password has a
// default (compose refuses to start without each one accounts.conf reads),
// and every published port is bound to 127.0.0.1, monitoring not at all.
func TestComposeRequiresPasswordsAndPublishesOnLoopback(t *testing.T) {
	raw, cf := readCompose(t)
	if m := regexp.MustCompile(`\$\{CASCADE_[A-Z0-9_]*PASSWORD(:?-[^}]*)?\}`).FindAll(raw, -1); m != nil {
		t.Errorf("compose.yaml gives passwords a default or lets them be unset: %s", bytes.Join(m, []byte(", ")))
	}
	accounts, err := os.ReadFile("../../deploy/nats/accounts.conf")
	if err != nil {
		t.Fatal(err)
	}
	natsEnv := cf.Services["nats"].Environment
	for _, m := range regexp.MustCompile(`\$(CASCADE_[A-Z0-9_]+_PASSWORD)`).FindAllSubmatch(accounts, -1) {
		name := string(m[1])
		if want := "${" + name + ":?"; !strings.HasPrefix(natsEnv[name], want) {
			t.Errorf("the nats service sets %s to %q, want it required (%s...})", name, natsEnv[name], want)
		}
	}
	for name, svc := range cf.Services {
		for _, port := range svc.Ports {
			if !strings.HasPrefix(port, "127.0.0.1:") {
				t.Errorf("service %s publishes port %q beyond loopback", name, port)
			}
			if strings.HasSuffix(port, ":8222") {
				t.Errorf("service %s publishes nats-server monitoring (%q), which has no authentication", name, port)
			}
		}
	}
}

// TestComposeDeploymentServesWithRolePermissions runs what deploy/compose.yaml
// deploys, without Docker: nats-server with deploy/nats/single.conf (its
// accounts and per-role permissions), and the controller, ingress and stage
// workers with the environment, users and replicas compose gives them. A
// producer (the producer user: client default, on its own inbox prefix)
// then sends MNIST images by request-reply and a durable job, and reads the
// job's result through its own results consumer; every one is answered,
// and no service is refused anything. A producer publishing into a model's
// work queue is refused by the server.
func TestComposeDeploymentServesWithRolePermissions(t *testing.T) {
	requireORT(t)
	_, cf := readCompose(t)
	natsSvc, ok := cf.Services["nats"]
	if !ok {
		t.Fatal("compose.yaml has no nats service")
	}
	// The server reads the role passwords from its environment.
	for k, v := range natsSvc.Environment {
		t.Setenv(k, interpolate(t, v))
	}
	srv := natstest.StartConfigFile(t, "../../deploy/nats/single.conf")
	hostPort := strings.TrimPrefix(srv.ClientURL(), "nats://")

	// Each service gets compose's environment, pointed at this server;
	// metrics and HTTP ports stay closed (tests run side by side).
	serviceEnv := map[string]map[string]string{}
	for _, name := range []string{"controller", "ingress", "stage-worker"} {
		svc, ok := cf.Services[name]
		if !ok {
			t.Fatalf("compose.yaml has no %s service", name)
		}
		env := map[string]string{}
		for k, v := range svc.Environment {
			env[k] = strings.Replace(interpolate(t, v), "@nats:4222", "@"+hostPort, 1)
			// The MNIST plan and models the image ships are the repository's.
			env[k] = strings.Replace(env[k], imageMNIST, "../../models/mnist", 1)
		}
		if !strings.Contains(env["CASCADE_NATS_URL"], "@"+hostPort) {
			t.Fatalf("%s: CASCADE_NATS_URL %q does not name the nats service with a user", name, env["CASCADE_NATS_URL"])
		}
		env["CASCADE_METRICS_ADDR"], env["CASCADE_HTTP_ADDR"] = "", ""
		serviceEnv[name] = env
	}
	workers := cf.Services["stage-worker"].Deploy.Replicas
	if workers < 1 {
		t.Fatalf("stage-worker replicas %d", workers)
	}
	producerURL := fmt.Sprintf("nats://producer:%s@%s", os.Getenv("CASCADE_PRODUCER_PASSWORD"), hostPort)

	// The producer is client default: its inboxes are _INBOX.default.>.
	inboxes := nats.CustomInboxPrefix("_INBOX." + wire.DefaultClient)
	refusals := &violations{}
	t.Cleanup(func() { // after the system stopped: shutting down is refused nothing either
		if v := refusals.list(); len(v) > 0 {
			t.Errorf("the server refused the services or the producer %d times: %q", len(v), v)
		}
	})
	sys := startConfig(t, system.Config{
		NATSURL: producerURL, ClientOptions: []nats.Option{inboxes}, ServiceEnv: serviceEnv, Workers: workers,
		Logger: slog.New(refusals),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Request-reply as the producer.
	images, err := mnist.TestImages()
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	rep, err := loadgen.Run(ctx, sys.Conn, loadgen.Config{
		Pipeline: "mnist", Items: images, Concurrency: 16, MaxRequests: n, Timeout: 30 * time.Second, Client: "compose-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != n || rep.Answered != n || rep.Lost != 0 || len(rep.ErrorCounts()) != 0 {
		t.Fatalf("request-reply as producer: sent %d, answered %d, lost %d, errors %v", rep.Sent, rep.Answered, rep.Lost, rep.ErrorCounts())
	}

	// A durable job as the producer, its result read from the results
	// stream with the producer's permissions.
	js, err := jetstream.New(sys.Conn)
	if err != nil {
		t.Fatal(err)
	}
	codec := wire.NewCodec()
	body, err := codec.EncodeRequest(&wire.Request{ID: "compose-job-1", Input: wire.FP32Tensor(sys.Plan.Input.Shape, images.Item(0))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, wire.JobsSubject("mnist", wire.DefaultClient), body, jetstream.WithMsgID("compose-job-1")); err != nil {
		t.Fatalf("publish a job as producer: %v", err)
	}
	// Its own durable consumer: named after the client, filtered to its
	// results subject (the only one its permissions allow).
	cons, err := js.CreateOrUpdateConsumer(ctx, wire.ResultsStream, jetstream.ConsumerConfig{
		Durable: wire.DefaultClient, FilterSubject: wire.ResultSubject("mnist", wire.DefaultClient), AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatalf("read results as producer: %v", err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(30 * time.Second))
	if err != nil {
		t.Fatalf("no result for the job: %v", err)
	}
	var res wire.Result
	if err := wire.DecodeResult(msg.Data(), &res); err != nil {
		t.Fatal(err)
	}
	if res.ID != "compose-job-1" || res.Error != nil || res.AnsweredBy == "" {
		t.Fatalf("job result %+v", res)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatalf("ack the job's result: %v", err)
	}

	// The producer may not write into a model's work queue.
	refused := make(chan error, 1)
	nc, err := nats.Connect(producerURL, inboxes, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case refused <- err:
		default:
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish(wire.ModelSubject("mnist", sys.Plan.Ladder[0]), body); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-refused:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("publish to a model queue as producer: %v, want a permissions violation", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("a producer's publish to a model queue was not refused")
	}
}

// TestComposeStartsHealthy checks the start order of deploy/compose.yaml:
// nats-server reports JetStream healthy, every service probes its own
// readiness with the CLI, waits for a healthy nats, and the ingress and
// workers for a healthy controller (which applies the topology).
func TestComposeStartsHealthy(t *testing.T) {
	_, cf := readCompose(t)
	natsHC := strings.Join(cf.Services["nats"].Healthcheck.Test, " ")
	if !strings.Contains(natsHC, "/healthz?js-enabled-only=true") {
		t.Errorf("nats health check %q does not ask for JetStream", natsHC)
	}
	for _, name := range []string{"controller", "ingress", "stage-worker"} {
		svc := cf.Services[name]
		if got := strings.Join(svc.Healthcheck.Test, " "); got != "CMD /usr/local/bin/cascadeserve health -q" {
			t.Errorf("%s health check %q", name, got)
		}
		if svc.Environment["CASCADE_METRICS_ADDR"] == "" {
			t.Errorf("%s sets no CASCADE_METRICS_ADDR for its health check to probe", name)
		}
		want := []string{"nats"}
		if name != "controller" {
			want = append(want, "controller")
		}
		for _, dep := range want {
			if c := svc.DependsOn[dep].Condition; c != "service_healthy" {
				t.Errorf("%s depends on %s with condition %q, want service_healthy", name, dep, c)
			}
		}
	}
	dockerfile, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dockerfile), "./cmd/cascadeserve") || !strings.Contains(string(dockerfile), "/usr/local/bin/") {
		t.Error("the Dockerfile does not ship the cascadeserve CLI in /usr/local/bin (the health checks run it)")
	}
	for _, want := range []string{"COPY models/mnist/plan.json " + imageMNIST + "/plan.json", "COPY models/mnist/onnx/ " + imageMNIST + "/onnx/"} {
		if !strings.Contains(string(dockerfile), want) {
			t.Errorf("the Dockerfile lacks %q: the services serve the MNIST plan and models from files", want)
		}
	}
	if got := cf.Services["controller"].Environment["CASCADE_PLAN"]; got != imageMNIST+"/plan.json" {
		t.Errorf("controller: CASCADE_PLAN %q, want the image's MNIST plan %s/plan.json", got, imageMNIST)
	}
	if got := cf.Services["stage-worker"].Environment["CASCADE_MODEL_DIR"]; got != imageMNIST {
		t.Errorf("stage-worker: CASCADE_MODEL_DIR %q, want the image's MNIST models %s", got, imageMNIST)
	}
}

// TestComposeBringYourOwnPlan checks deploy/compose.byo.yaml: the
// variables it sets are the ones the controller and the workers read, and
// the plan and model folder lie in the folder it mounts.
func TestComposeBringYourOwnPlan(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/compose.byo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(raw, &cf); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"CASCADE_BYO_PIPELINE": "digits", "CASCADE_BYO_DIR": "./byo"}
	env := func(service string) map[string]string {
		out := map[string]string{}
		for k, v := range cf.Services[service].Environment {
			out[k] = composeVar.ReplaceAllStringFunc(v, func(ref string) string {
				name := composeVar.FindStringSubmatch(ref)[1]
				val, ok := vars[name]
				if !ok {
					t.Fatalf("compose.byo.yaml refers to %s", name)
				}
				return val
			})
		}
		return out
	}
	mount := func(service string) string {
		for _, v := range cf.Services[service].Volumes {
			if parts := strings.Split(v, ":"); len(parts) >= 2 {
				return parts[len(parts)-2]
			}
		}
		t.Fatalf("%s mounts nothing", service)
		return ""
	}
	ctl, err := controller.ConfigFromEnv(env("controller"))
	if err != nil {
		t.Fatal(err)
	}
	if ctl.Pipeline != "digits" || !strings.HasPrefix(ctl.Plan, mount("controller")+"/") {
		t.Errorf("controller: pipeline %q, plan %q outside its mount %q", ctl.Pipeline, ctl.Plan, mount("controller"))
	}
	wk, err := stageworker.ConfigFromEnv(env("stage-worker"))
	if err != nil {
		t.Fatal(err)
	}
	if wk.Pipeline != "digits" || wk.ModelDir != mount("stage-worker") {
		t.Errorf("stage-worker: pipeline %q, model dir %q, mount %q", wk.Pipeline, wk.ModelDir, mount("stage-worker"))
	}
	if p := env("ingress")["CASCADE_PIPELINE"]; p != "digits" {
		t.Errorf("ingress pipeline %q", p)
	}
}
