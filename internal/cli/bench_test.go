package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/bench"
)

func runBenchCLI(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = Run(context.Background(), Env{Stdout: &out, Stderr: &errOut, Getenv: os.Getenv}, append([]string{"bench"}, args...))
	if err != nil {
		t.Logf("stderr: %s", errOut.String())
	}
	return out.String(), err
}

func TestBenchUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"unknown part", []string{"--only", "ceiling,gpu"}},
		{"bad batches", []string{"--batches", "64,x"}},
		{"zero batch", []string{"--batches", "0"}},
		{"bad fractions", []string{"--check-plan", "--fractions", "0.5,-1"}},
		{"too many items", []string{"--check-plan", "--items", "10001"}},
		{"no items", []string{"--check-plan", "--items", "0"}},
		{"bad log level", []string{"--log-level", "loud"}},
		{"zero rounds", []string{"--rounds", "0"}},
		{"zero runners", []string{"--check-plan", "--runners", "0"}},
		{"negative duration", []string{"--duration", "-1s"}},
		{"extra argument", []string{"now"}},
		{"unknown flag", []string{"--frobnicate"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := runBenchCLI(t, tc.args...); !errors.Is(err, ErrUsage) {
				t.Fatalf("bench %v: got %v, want a usage error", tc.args, err)
			}
		})
	}
}

// TestBenchCeilingOnly runs the one part that needs no ONNX Runtime, small,
// and reads the numbers back from --json.
func TestBenchCeilingOnly(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bench.json")
	out, err := runBenchCLI(t, "--only", "ceiling", "--messages", "200", "--batches", "16,32", "--rounds", "1", "--json", file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Raw JetStream ceiling") || !strings.Contains(out, "item-hops/s") || strings.Contains(out, "Whole pipeline") {
		t.Errorf("output:\n%s", out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Ceiling == nil || len(rep.Ceiling.Runs) != 2 || len(rep.Pipelines) != 0 || len(rep.Models) != 0 {
		t.Fatalf("report %+v, want two ceiling runs and nothing else", rep)
	}
	for _, r := range rep.Ceiling.Runs {
		if r.Received != 200 || r.Missing != 0 || r.Duplicates != 0 || !(r.HopsPerSec > 0) {
			t.Errorf("ceiling run %+v", r)
		}
	}
}
