package hygiene

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
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
	if testing.Short() {
		t.Skip("runs go list")
	}
	cmd := exec.Command("go", append([]string{"list", "-deps", "-f", "{{.ImportPath}}"}, pkgs...)...)
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	return strings.Fields(string(out))
}

// TestPurePackagesStayPure keeps the planner and the batching policy free of
// NATS, Prometheus, ONNX Runtime and cgo, so they run and test anywhere.
func TestPurePackagesStayPure(t *testing.T) {
	forbidden := []string{"github.com/nats-io/", "github.com/prometheus/", "github.com/yalue/onnxruntime_go", "runtime/cgo", module + "/internal/"}
	for _, d := range deps(t, "./pkg/...") {
		for _, f := range forbidden {
			if strings.HasPrefix(d, f) {
				t.Errorf("pkg/... depends on %s", d)
			}
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
