package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/bench"
)

func TestBenchUsageErrors(t *testing.T) {
	testUsageErrors(t, "bench", []usageCase{
		{"unknown part", []string{"--only", "ceiling,gpu"}},
		{"bad batches", []string{"--hop-batches", "64,x"}},
		{"zero batch", []string{"--hop-batches", "0"}},
		{"zero fetch batch", []string{"--fetch-batch", "0"}},
		{"zero pub batch", []string{"--pub-batch", "0"}},
		{"message too small for its index", []string{"--size", "7"}},
		{"negative half load", []string{"--half-load", "-1s"}},
		{"negative idle", []string{"--idle", "-1"}},
		{"bad fractions", []string{"--check-plan", "--fractions", "0.5,-1"}},
		{"too many items", []string{"--check-plan", "--items", "10001"}},
		{"no items", []string{"--check-plan", "--items", "0"}},
		{"bad log level", []string{"--log-level", "loud"}},
		{"zero rounds", []string{"--rounds", "0"}},
		{"zero runners", []string{"--check-plan", "--runners", "0"}},
		{"negative partitions", []string{"--partitions", "-1"}},
		{"too many partitions", []string{"--partitions", "1000"}},
		{"knee without check-plan", []string{"--knee"}},
		{"zero knee duration", []string{"--check-plan", "--knee", "--knee-duration", "0s"}},
		{"negative knee budget", []string{"--check-plan", "--knee", "--knee-budget", "-1s"}},
		{"negative knee start", []string{"--check-plan", "--knee", "--knee-start", "-5"}},
		{"negative duration", []string{"--duration", "-1s"}},
		{"extra argument", []string{"now"}},
		{"unknown flag", []string{"--frobnicate"}},
	})
}

// TestBenchPartitionsReachTheServices checks that --partitions becomes the
// controller's CASCADE_QUEUE_PARTITIONS beside the provider settings, and
// that leaving it out leaves the plan's partitions alone.
func TestBenchPartitionsReachTheServices(t *testing.T) {
	f := benchFlags{partitions: 4}
	f.pf.provider = "cpu"
	env := f.workerEnv()
	if env["CASCADE_QUEUE_PARTITIONS"] != "4" || env["CASCADE_WORKER_PROVIDER"] != "cpu" {
		t.Fatalf("--partitions 4 --provider cpu: services' env %v", env)
	}
	if _, ok := (&benchFlags{}).workerEnv()["CASCADE_QUEUE_PARTITIONS"]; ok {
		t.Fatal("without --partitions the services' env sets CASCADE_QUEUE_PARTITIONS")
	}
}

// TestBenchCeilingOnly runs the parts that need no ONNX Runtime, small,
// and reads the numbers back from --json.
func TestBenchCeilingOnly(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bench.json")
	out, err := runCLI(t, "bench", "--only", "ceiling,hops", "--messages", "300", "--fetch-batch", "64", "--hop-messages", "200",
		"--hop-batches", "16,32", "--rounds", "1", "--json", file)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Broker ceiling", "durable fetch + explicit ack", "Item-hop ceiling", "item-hops/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Whole pipeline") {
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
	if rep.Broker == nil || len(rep.Broker.Runs) != 1 || rep.Broker.FetchBatch != 64 || rep.HopCeiling == nil || len(rep.HopCeiling.Runs) != 2 ||
		len(rep.Pipelines) != 0 || len(rep.Models) != 0 || rep.Baseline != nil {
		t.Fatalf("report %+v, want one broker round, two item-hop runs and nothing else", rep)
	}
	if r := rep.Broker.Runs[0]; !r.Correct() || r.Messages != 300 || !(r.FetchMsgsPerSec > 0) {
		t.Errorf("broker round %+v", r)
	}
	for _, r := range rep.HopCeiling.Runs {
		if r.Received != 200 || r.Missing != 0 || r.Duplicates != 0 || !(r.HopsPerSec > 0) {
			t.Errorf("item-hop run %+v", r)
		}
	}
}
