package hygiene

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/cascadeserve/cascadeserve"

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repo root not found: %v", err)
	}
	return root
}

// TestEveryPackageHasDocComment follows tailscale's pkgdoc_test.
func TestEveryPackageHasDocComment(t *testing.T) {
	root := repoRoot(t)
	dirs := map[string]bool{}
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			dirs[filepath.Dir(path)] = true
		}
		return nil
	})
	for dir := range dirs {
		fset := token.NewFileSet()
		pkgs, err := parser.ParseDir(fset, dir, func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			t.Errorf("%s: %v", dir, err)
			continue
		}
		for name, p := range pkgs {
			documented := false
			for _, f := range p.Files {
				if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
					documented = true
				}
			}
			if !documented {
				rel, _ := filepath.Rel(root, dir)
				t.Errorf("package %s (%s) has no doc comment", name, rel)
			}
		}
	}
}

func deps(t *testing.T, pkgs ...string) []string {
	t.Helper()
	return list(t, "{{.ImportPath}}", append([]string{"-deps"}, pkgs...)...)
}

// list runs go list -f format args... in the repo root and returns its
// output lines.
func list(t *testing.T, format string, args ...string) []string {
	t.Helper()
	return listEnv(t, nil, format, args...)
}

// listEnv is list with extra environment variables.
func listEnv(t *testing.T, env []string, format string, args ...string) []string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs go list")
	}
	cmd := exec.Command("go", append([]string{"list", "-f", format}, args...)...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// clientPackage is the one package under pkg/ that talks NATS: the client
// producers import.
const clientPackage = module + "/pkg/client"

// TestPurePackagesStayPure keeps the packages under pkg/ free of NATS,
// Prometheus, ONNX Runtime, cgo and the internal packages, so they run and
// test anywhere and other modules can import them. The exception is
// pkg/client, which may use the NATS client (TestClientPackageStaysSmall);
// no other package under pkg/ may import it.
func TestPurePackagesStayPure(t *testing.T) {
	forbidden := []string{"github.com/nats-io/", "github.com/prometheus/", "github.com/yalue/onnxruntime_go", "runtime/cgo", module + "/internal/", clientPackage}
	var pure []string
	for _, p := range list(t, "{{.ImportPath}}", "./pkg/...") {
		if p != clientPackage && !strings.HasPrefix(p, clientPackage+"/") {
			pure = append(pure, p)
		}
	}
	if len(pure) == 0 {
		t.Fatal("no package under pkg/")
	}
	for _, d := range deps(t, pure...) {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) {
				t.Errorf("pkg/... (other than pkg/client) depends on %s", d)
			}
		}
	}
}

// TestClientPackageStaysSmall: pkg/client may import the NATS client
// (github.com/nats-io/nats.go and what it brings: nuid, nkeys) and pkg/wire,
// and nothing internal, no nats-server, Prometheus or ONNX Runtime, and no
// cgo of its own: outside the standard library no dependency has cgo files,
// and with CGO_ENABLED=0 it does not link runtime/cgo (with cgo, the
// standard library's net resolver may).
func TestClientPackageStaysSmall(t *testing.T) {
	allowedNATS := []string{"github.com/nats-io/nats.go", "github.com/nats-io/nuid", "github.com/nats-io/nkeys"}
	forbidden := []string{"github.com/prometheus/", "github.com/yalue/onnxruntime_go", module + "/internal/", module + "/cmd/", module + "/services/"}
	for _, line := range list(t, "{{.ImportPath}} {{.Standard}} {{len .CgoFiles}}", "-deps", clientPackage) {
		f := strings.Fields(line)
		d, std, cgoFiles := f[0], f[1] == "true", f[2] != "0"
		if !std && cgoFiles {
			t.Errorf("pkg/client depends on %s, which uses cgo", d)
		}
		for _, p := range forbidden {
			if strings.HasPrefix(d, p) {
				t.Errorf("pkg/client depends on %s", d)
			}
		}
		if strings.HasPrefix(d, "github.com/nats-io/") && !slices.ContainsFunc(allowedNATS, func(a string) bool { return d == a || strings.HasPrefix(d, a+"/") }) {
			t.Errorf("pkg/client depends on %s (allowed from nats-io: %s)", d, strings.Join(allowedNATS, ", "))
		}
		if strings.HasPrefix(d, module+"/") && d != clientPackage && d != module+"/pkg/wire" {
			t.Errorf("pkg/client depends on %s (allowed from this module: pkg/wire)", d)
		}
	}
	for _, d := range listEnv(t, []string{"CGO_ENABLED=0"}, "{{.ImportPath}}", "-deps", clientPackage) {
		if d == "runtime/cgo" {
			t.Errorf("pkg/client needs cgo: it links runtime/cgo with CGO_ENABLED=0")
		}
	}
}

// TestOnlyWorkersLinkONNXRuntime: ingress and controller must build and run
// without ONNX Runtime (and without cgo).
func TestOnlyWorkersLinkONNXRuntime(t *testing.T) {
	for _, bin := range []string{"./services/ingress", "./services/controller"} {
		for _, d := range deps(t, bin) {
			if strings.HasPrefix(d, "github.com/yalue/onnxruntime_go") || d == module+"/internal/onnxrt" {
				t.Errorf("%s links %s", bin, d)
			}
		}
	}
}

// services are the three service binaries.
var services = []string{"./services/ingress", "./services/stage-worker", "./services/controller"}

// TestServicesDoNotLinkNATSServer: the three service binaries connect to
// a nats-server; only the all-in-one binary and the tests embed one
// (internal/natsembed).
func TestServicesDoNotLinkNATSServer(t *testing.T) {
	for _, bin := range services {
		for _, d := range deps(t, bin) {
			if strings.HasPrefix(d, "github.com/nats-io/nats-server/") || d == module+"/internal/natsembed" {
				t.Errorf("%s links %s", bin, d)
			}
		}
	}
}

// TestServicesDoNotLinkMNIST: the services serve any plan from files (the
// controller binary reads CASCADE_PLAN, the stage worker CASCADE_MODEL_DIR)
// and know nothing of MNIST. Only the edge, the CLI and the all-in-one
// composition (internal/system), brings the built-in MNIST plan and its
// embedded models (several MB) and hands them to the services.
func TestServicesDoNotLinkMNIST(t *testing.T) {
	const mnist = module + "/models/mnist"
	for _, pkg := range append(services, "./internal/ingress", "./internal/stageworker", "./internal/controller") {
		for _, d := range deps(t, pkg) {
			if d == mnist {
				t.Errorf("%s imports %s", pkg, d)
			}
		}
	}
}
