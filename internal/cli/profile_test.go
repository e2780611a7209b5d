package cli

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
	"github.com/cascadeserve/cascadeserve/internal/profile"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// runProfileCLI runs cascadeserve profile with args (runCLI).
func runProfileCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return runCLI(t, append([]string{"profile"}, args...)...)
}

func TestProfileUsageErrors(t *testing.T) {
	out := filepath.Join(t.TempDir(), "p.json")
	for _, args := range [][]string{
		{"--out", out, "--system-qps", "-1"},
		{"--out", out, "--system-qps", "100,x"},
		{"--out", out, "--system-qps", "100", "--floor-qps", "-1"},
		{"--out", out, "--system-qps", "10", "--models", "a=a.onnx"},
		{"--out", out, "--system-qps", "10", "--runners", "0"},
		{"--out", out, "--system-qps", "10", "--system-rounds", "0"},
		{"--out", out, "--system-duration", "0s"},
	} {
		if _, err := runProfileCLI(t, args...); !errors.Is(err, ErrUsage) {
			t.Errorf("profile %q: %v, want a usage error", args, err)
		}
	}
}

// TestProfileSystem measures a small profile with the NATS costs, the
// all-in-one system's per-request overhead at two light loads and its
// latency floor at a lighter one.
func TestProfileSystem(t *testing.T) {
	orttest.Library(t, onnxrt.FindLibrary)
	out := filepath.Join(t.TempDir(), "profile.json")
	stdout, err := runProfileCLI(t, "--out", out, "--quiet", "--max-batch", "2", "--reps", "1", "--warmup", "1",
		"--hop-samples", "20", "--system-qps", "40,60", "--floor-qps", "20", "--system-duration", "1s")
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
	// The floor is what the live path takes beyond the simulated one
	// (client, ingress, JetStream round trips), clamped at 0. At this tiny
	// load and run length, under -race, the simulator's batching wait can
	// match even the live p95, so a gap of 0 is a valid measurement; that
	// the floor run happened is checked in the output below.
	if f.LatencyFloorMs < 0 || f.LatencyFloorP95Ms < f.LatencyFloorMs {
		t.Errorf("latency floor %v ms, p95 %v ms; want >= 0 and p95 >= median", f.LatencyFloorMs, f.LatencyFloorP95Ms)
	}
	// Each load of the curve carries its own floor, measured the same way.
	if len(f.CPULoad) != 2 {
		t.Fatalf("cpu_load %+v: want the two loads", f.CPULoad)
	}
	for _, p := range f.CPULoad {
		if p.FloorMs < 0 || p.FloorP95Ms < p.FloorMs {
			t.Errorf("cpu_load point %+v: want a floor >= 0 with p95 >= median", p)
		}
	}
	if n := strings.Count(stdout, "latency floor there"); n != 2 {
		t.Errorf("output has %d loads' floors, want 2:\n%s", n, stdout)
	}
	for _, want := range []string{"system at 40 req/s", "system at 60 req/s", "request overhead", "latency floor at 20 req/s", "wrote " + out} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestFitSystemCPU(t *testing.T) {
	res := func(qps, overhead float64) systemResult { return systemResult{QPS: qps, RequestOverheadMs: overhead} }
	tests := []struct {
		name           string
		results        []systemResult
		perReq, idleMs float64
	}{
		{"one load", []systemResult{res(1500, 0.4)}, 0.4, 0},
		// 200 + 0.2 q ms/s: 0.4 ms per request at 1000/s, 0.3 at 2000/s.
		{"a line", []systemResult{res(1000, 0.4), res(2000, 0.3)}, 0.2, 200},
		{"three points on it", []systemResult{res(1000, 0.4), res(2000, 0.3), res(4000, 0.25)}, 0.2, 200},
		// CPU per second falling with load is no line to trust.
		{"negative slope", []systemResult{res(1000, 0.4), res(2000, 0.1)}, 0.4, 0},
		// A negative intercept neither.
		{"negative intercept", []systemResult{res(1000, 0.1), res(2000, 0.3)}, 0.3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			perReq, idle := fitSystemCPU(tt.results)
			if math.Abs(perReq-tt.perReq) > 1e-9 || math.Abs(idle-tt.idleMs) > 1e-6 {
				t.Errorf("fit = %v ms/request + %v ms/s, want %v + %v", perReq, idle, tt.perReq, tt.idleMs)
			}
		})
	}
}

// TestSystemSourceFresh checks that --system-fresh measures every run on a
// system of its own, whose streams hold nothing of the runs before, and that
// without it one system serves every run.
func TestSystemSourceFresh(t *testing.T) {
	lib := orttest.Library(t, onnxrt.FindLibrary)
	name := mnist.Ladder()[0]
	onnx, err := mnist.Model(name)
	if err != nil {
		t.Fatal(err)
	}
	m := systemMeasurement{
		Model: profile.Model{Name: name, ONNX: onnx}, Profile: plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: 0.01}}},
		QPS: []float64{20}, Warmup: 100 * time.Millisecond, Duration: 300 * time.Millisecond,
		Runners: 1, Threads: 1, Lib: lib, Batching: plan.Batching{MaxBatch: 4, MaxDelayMs: 1},
	}
	for _, fresh := range []bool{true, false} {
		t.Run(fmt.Sprintf("fresh=%v", fresh), func(t *testing.T) {
			m.Fresh = fresh
			src := systemSource{ctx: t.Context(), dir: t.TempDir(), m: m}
			defer src.stop()
			first, err := src.next()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := first.measureLoad(20, m); err != nil {
				t.Fatal(err)
			}
			before := queueStored(t, first)
			second, err := src.next()
			if err != nil {
				t.Fatal(err)
			}
			if got := second != first; got != fresh {
				t.Fatalf("second run on a new system: %v, want %v", got, fresh)
			}
			if fresh && second.seed == first.seed {
				t.Errorf("both systems' load generators start from seed %d: want other requests", first.seed)
			}
			// A fresh system's queues hold nothing of the first run (only
			// the start's readiness probe).
			stored := queueStored(t, second)
			if fresh && stored >= before {
				t.Errorf("fresh system's queues stored %d messages before its run, the first system %d: want fewer", stored, before)
			}
			if !fresh && stored != before {
				t.Errorf("the one system's queues stored %d messages, %d after the first run: want the same", stored, before)
			}
		})
	}
}

// queueStored sums the last sequence of every stream of ms's server but the
// key-value buckets' (the controller writes its plan and gear at start): the
// messages its queues and results ever stored.
func queueStored(t *testing.T, ms *measuredSystem) uint64 {
	t.Helper()
	js, err := jetstream.New(ms.sys.Conn)
	if err != nil {
		t.Fatal(err)
	}
	var stored uint64
	names := js.StreamNames(t.Context())
	for name := range names.Name() {
		if strings.HasPrefix(name, "KV_") {
			continue
		}
		s, err := js.Stream(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		stored += s.CachedInfo().State.LastSeq
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return stored
}

// TestProfileSystemStopsAtSaturation checks that a load the system cannot
// keep up with ends the list of loads instead of the profile.
func TestProfileSystemStopsAtSaturation(t *testing.T) {
	orttest.Library(t, onnxrt.FindLibrary)
	out := filepath.Join(t.TempDir(), "profile.json")
	stdout, err := runProfileCLI(t, "--out", out, "--quiet", "--max-batch", "2", "--reps", "1", "--warmup", "1",
		"--hop-samples", "20", "--system-qps", "40,200000,300000", "--system-rounds", "2", "--floor-qps", "0",
		"--system-duration", "1s", "--runners", "1")
	if err != nil {
		t.Fatalf("profile: %v\n%s", err, stdout)
	}
	f, err := plan.LoadProfileFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !(f.RequestOverheadMs > 0) {
		t.Errorf("request overhead %v ms: want the 40 req/s load measured", f.RequestOverheadMs)
	}
	for _, want := range []string{"system at 40 req/s", "saturated: the system did not keep up at 200000 requests/s"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "300000") {
		t.Errorf("output mentions the load above the saturated one:\n%s", stdout)
	}
}
