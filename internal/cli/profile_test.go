package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// profileNeedsORT skips the test without the ONNX Runtime library, unless
// CASCADE_REQUIRE_ORT=1.
func profileNeedsORT(t *testing.T) {
	t.Helper()
	if _, err := onnxrt.FindLibrary(os.Getenv); err != nil {
		if errors.Is(err, onnxrt.ErrLibraryNotFound) && os.Getenv("CASCADE_REQUIRE_ORT") != "1" {
			t.Skipf("skipping: %v", err)
		}
		t.Fatal(err)
	}
}

func runProfileCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := Env{Stdout: &out, Stderr: &errOut, Getenv: os.Getenv}
	err := Run(context.Background(), env, append([]string{"profile"}, args...))
	if err != nil {
		t.Logf("stderr: %s", errOut.String())
	}
	return out.String(), err
}

func TestProfileUsageErrors(t *testing.T) {
	out := filepath.Join(t.TempDir(), "p.json")
	for _, args := range [][]string{
		{"--out", out, "--system-qps", "-1"},
		{"--out", out, "--system-qps", "10", "--models", "a=a.onnx"},
		{"--out", out, "--system-qps", "10", "--runners", "0"},
		{"--out", out, "--system-duration", "0s"},
	} {
		if _, err := runProfileCLI(t, args...); !errors.Is(err, ErrUsage) {
			t.Errorf("profile %q: %v, want a usage error", args, err)
		}
	}
}

// TestProfileSystem measures a small profile with the NATS costs and the
// all-in-one system's per-request overhead at a light load.
func TestProfileSystem(t *testing.T) {
	profileNeedsORT(t)
	out := filepath.Join(t.TempDir(), "profile.json")
	stdout, err := runProfileCLI(t, "--out", out, "--quiet", "--max-batch", "2", "--reps", "1", "--warmup", "1",
		"--hop-samples", "20", "--system-qps", "40", "--system-duration", "1s")
	if err != nil {
		t.Fatalf("profile: %v\n%s", err, stdout)
	}
	f, err := plan.LoadProfileFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !(f.ItemOverheadMs > 0) || !(f.BatchOverheadMs > 0) || !(f.RequestOverheadMs > 0) {
		t.Errorf("overheads: item %v, batch %v, request %v ms; want all measured", f.ItemOverheadMs, f.BatchOverheadMs, f.RequestOverheadMs)
	}
	for _, want := range []string{"linear alone", "request overhead", "wrote " + out} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
}
