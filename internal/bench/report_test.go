package bench

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -update rewrites it):\n%s", name, got)
	}
}

func testEnvironment() Environment {
	return Environment{
		Started: time.Date(2026, 11, 27, 1, 2, 3, 0, time.UTC), GoVersion: "go1.26.8", OS: "linux", Arch: "amd64",
		CPUs: 2, ORTVersion: "1.30.0", Pipeline: "mnist", PlanFile: "built-in mnist plan", Runners: 2,
	}
}

func TestReportTable(t *testing.T) {
	rep := &Report{
		Environment: testEnvironment(),
		Settings:    RunSettings{ComputeSeconds: 2, WarmupSeconds: 3, DurationSeconds: 15, HalfLoadSeconds: 10, IdleRequests: 200},
		Broker: &Broker{PayloadBytes: 784, PubBatch: 500, FetchBatch: 500, Runs: []BrokerRun{
			{Messages: 100000, PubAcked: 100000, PubSeconds: 1, PubMsgsPerSec: 100000, Received: 100000, FetchSeconds: 0.8, FetchMsgsPerSec: 125000, Fetches: 200},
			{Messages: 100000, PubAcked: 99999, PubSeconds: 0.8, PubMsgsPerSec: 125000, Received: 100001, Missing: 1, Duplicates: 2, Redelivered: 2,
				FetchSeconds: 1, FetchMsgsPerSec: 100000, Fetches: 201},
		}, PubMsgsPerSec: 125000, FetchAckMsgsPerSec: 125000},
		HopCeiling: &Ceiling{PayloadBytes: 3364, Runs: []CeilingRun{
			{Batch: 64, Fetchers: 2, Messages: 20000, Received: 20000, Fetches: 320, MeanBatch: 62.5, Seconds: 1, HopsPerSec: 20000},
			{Batch: 128, Fetchers: 2, Messages: 20000, Received: 20001, Missing: 1, Duplicates: 2, Fetches: 160, MeanBatch: 125, Seconds: 0.8, HopsPerSec: 25000},
		}},
		Models: []ModelRun{{Model: "linear", Batch: 64, Sessions: 2, Items: 1000000, Seconds: 2, ItemsPerSec: 500000}},
		Cascades: []CascadeRun{
			{Gear: "accurate", Cascade: "mlp@0.95>cnn", Sessions: 2, Passes: 3, Items: 30000,
				Reached: []int{30000, 4500}, AnsweredBy: []int{25500, 4500}, Correct: 29700, Accuracy: 0.99, MeanBatch: []float64{16, 15.5},
				Seconds: 2, ItemsPerSec: 15000},
			{Gear: "single-cnn", Cascade: "cnn", Sessions: 2, Passes: 1, Items: 10000,
				Reached: []int{10000}, AnsweredBy: []int{10000}, Correct: 9905, Accuracy: 0.9905, MeanBatch: []float64{16},
				Seconds: 2, ItemsPerSec: 5000},
		},
		Pipelines: []GearRun{
			{Gear: "accurate", Cascade: "mlp@0.95>cnn", Load: LoadRun{
				Concurrency: 64, Seconds: 15, Sent: 15000, Answered: 14990, Errors: map[string]int{"overloaded": 7, "deadline_exceeded": 3},
				Throughput: 999.3, P50Ms: 10, P95Ms: 20, P99Ms: 30, Accuracy: 0.99, StagesPerRequest: 1.15,
			},
				HalfLoad: &LoadRun{OfferedQPS: 500, Throughput: 498, P50Ms: 2, P95Ms: 4.5, P99Ms: 7, Errors: map[string]int{}},
				Idle:     &LoadRun{Concurrency: 1, Answered: 200, P50Ms: 0.81, P95Ms: 1.234, Errors: map[string]int{}, Lost: 1}},
			{Gear: "single-cnn", Cascade: "cnn", Load: LoadRun{
				Concurrency: 64, Seconds: 15, Sent: 6000, Answered: 6000, Throughput: 400, P50Ms: 30, P95Ms: 50, P99Ms: 60, Accuracy: 0.9906, StagesPerRequest: 1,
			}, Idle: &LoadRun{Concurrency: 1, Answered: 200, P50Ms: 1, P95Ms: 2}},
		},
		Baseline: &Baseline{Model: "cnn", Gear: "single-cnn", BatchingOf: "accurate"},
	}
	rep.Pipelines[0].Load.Throughput = 1000
	rep.HopCeiling.Best = rep.HopCeiling.Runs[1]
	rep.Ratios = ratios(rep)
	if r := rep.Ratios[0]; r.OverCascade != 1000.0/15000 || r.OverFetchAck != 1000.0/125000 || r.FetchAckMsgs != 125000 ||
		r.OverHopCeiling != 1000.0/25000 || r.HopsOverHopCeiling != 1150.0/25000 {
		t.Errorf("ratios %+v", r)
	}
	rep.Baseline.Versus = baselineRatios(rep)
	want := []BaselineRatio{
		{Gear: "accurate", Where: "pipeline", GearQPS: 1000, SingleQPS: 400, GearAccuracy: 0.99, SingleAccuracy: 0.9906, Speedup: 2.5},
		{Gear: "accurate", Where: "in-process", GearQPS: 15000, SingleQPS: 5000, GearAccuracy: 0.99, SingleAccuracy: 0.9905, Speedup: 3},
	}
	if !slices.Equal(rep.Baseline.Versus, want) {
		t.Errorf("baseline ratios %+v, want %+v", rep.Baseline.Versus, want)
	}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	golden(t, "report.txt", b.Bytes())
}

func TestPlanCheckTable(t *testing.T) {
	val, test := 0.9912, 0.9897
	c := &PlanCheck{
		Environment: testEnvironment(), Gear: "accurate", Cascade: "mlp@0.95>cnn", Capacity: 300,
		Accuracy: AccuracyCheck{Predicted: 0.99, Measured: 0.9896, Diff: -0.0004, Tolerance: 0.003, Pass: true, Items: 10000,
			ValidationReplay: &val, TestReplay: &test, Run: LoadRun{Answered: 10000}},
		Latency: []LatencyCheck{
			{Fraction: 0.5, QPS: 150, PredictedP95Ms: 10, MeasuredP95Ms: 12, RelErr: 0.2, Tolerance: 0.25, Pass: true, Run: LoadRun{Throughput: 149, P50Ms: 5}},
			{Fraction: 0.8, QPS: 240, PredictedP95Ms: 20, MeasuredP95Ms: 40, RelErr: 1, Tolerance: 0.25, Run: LoadRun{Throughput: 238, P50Ms: 9, Lost: 1}},
		},
	}
	if c.Pass() {
		t.Error("a missed latency target passes the check")
	}
	var b bytes.Buffer
	if err := c.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	golden(t, "plancheck.txt", b.Bytes())
	c.Latency = c.Latency[:1]
	if !c.Pass() {
		t.Error("a check with every target met does not pass")
	}
}
