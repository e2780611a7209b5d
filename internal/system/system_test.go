package system_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/system/systemtest"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// requireORT skips the test without the ONNX Runtime library, unless
// CASCADE_REQUIRE_ORT=1.
func requireORT(t *testing.T) {
	t.Helper()
	orttest.Library(t, onnxrt.FindLibrary)
}

func start(t *testing.T, workers int, env map[string]string, reg prometheus.Registerer) *system.System {
	t.Helper()
	return startPlan(t, "", workers, env, reg)
}

// startPlan is start serving the plan in planFile ("" for the built-in one).
func startPlan(t *testing.T, planFile string, workers int, env map[string]string, reg prometheus.Registerer) *system.System {
	t.Helper()
	requireORT(t)
	return startConfig(t, system.Config{
		DataDir: t.TempDir(), NATSPort: -1, PlanFile: planFile, Workers: workers, Env: env, Registerer: reg,
	})
}

// startConfig starts a system with cfg (ReadyTimeout 90 s unless set),
// stopped by t.Cleanup.
var startConfig = systemtest.Start

// handwrittenPlan is the hand-written MNIST plan's file.
var handwrittenPlan = filepath.Join("..", "..", "models", "mnist", mnist.HandwrittenPlanFile)

// testImages returns the MNIST test images.
func testImages(t *testing.T) *dataset.Set {
	t.Helper()
	images, err := mnist.TestImages()
	if err != nil {
		t.Fatal(err)
	}
	return images
}

// expected replays gear g of plan p on the test replay, exactly as workers
// decide: the label and answering model of every test image, and whether
// the decision was a near-tie (confidence within 1e-4 of a threshold, where
// float rounding differences between batch sizes may flip it).
func expected(t *testing.T, p *plan.Plan, g plan.Gear) (labels []int, by []string, tie []bool) {
	t.Helper()
	r, err := mnist.TestReplay()
	if err != nil {
		t.Fatal(err)
	}
	return plantest.ReplayGear(p, g, r)
}

// TestAllTestImagesAtFixedGear sends all 10,000 MNIST test images through the
// ingress at a pinned two-stage gear: every request gets exactly one result,
// and every prediction equals an in-process replay of that gear.
func TestAllTestImagesAtFixedGear(t *testing.T) {
	p, err := mnist.Plan()
	if err != nil {
		t.Fatal(err)
	}
	var gear plan.Gear
	for _, g := range p.Gears {
		if len(g.Cascade) >= 2 {
			gear = g // the cheapest multi-stage gear keeps the test fast
		}
	}
	if gear.ID == "" {
		t.Fatal("built-in plan has no multi-stage gear")
	}
	sys := start(t, 1, map[string]string{"CASCADE_GEAR": gear.ID}, nil)
	images := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rep := runLoad(ctx, t, sys, loadgen.Config{
		Pipeline: p.Pipeline, Items: images, Concurrency: 64, MaxRequests: images.Len(),
		Duration: 7 * time.Minute, Timeout: 2 * time.Minute,
	})
	// runLoad checked that every request sent got one result, no error.
	if rep.Sent != images.Len() {
		t.Fatalf("sent %d of the %d images", rep.Sent, images.Len())
	}
	wantLabel, wantBy, tie := expected(t, p, gear)
	seen := make([]bool, images.Len())
	mismatches, ties := 0, 0
	for _, o := range rep.Outcomes {
		if seen[o.Index] {
			t.Fatalf("image %d answered twice", o.Index)
		}
		seen[o.Index] = true
		if o.Gear != gear.ID {
			t.Errorf("image %d answered in gear %q, want %q", o.Index, o.Gear, gear.ID)
		}
		if o.Label != wantLabel[o.Index] || o.AnsweredBy != wantBy[o.Index] {
			if tie[o.Index] {
				ties++
				continue
			}
			mismatches++
			if mismatches <= 5 {
				t.Errorf("image %d: pipeline said %d by %s, replay says %d by %s", o.Index, o.Label, o.AnsweredBy, wantLabel[o.Index], wantBy[o.Index])
			}
		}
	}
	if mismatches > 0 {
		t.Fatalf("%d of %d predictions differ from the replay (plus %d near-ties)", mismatches, images.Len(), ties)
	}
	t.Logf("10000 results, accuracy %.2f%%, %d near-tie differences, throughput %.0f req/s", 100*rep.Accuracy(), ties, rep.Throughput())
}

// TestGearSwitchUnderLoad drives load past the accurate gear's capacity with
// two workers: the controller switches gears, both workers apply the switch,
// and every request gets exactly one result. It serves the hand-written
// MNIST plan, whose accurate gear ends far below what the system carries
// (in the generated built-in plan it ends near the system's limit, and twice
// that would be answered `overloaded`).
func TestGearSwitchUnderLoad(t *testing.T) {
	reg := prometheus.NewRegistry()
	sys := startPlan(t, handwrittenPlan, 2, map[string]string{"CASCADE_WORKER_RUNNERS": "1"}, reg)
	p := sys.Plan
	images := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Offer twice the accurate gear's max_qps for 4 s, then a trickle, so
	// the controller shifts to a cheaper gear and later back.
	peak := 2 * p.Gears[0].MaxQPS
	sched := func(d time.Duration) float64 {
		if d < 4*time.Second {
			return peak
		}
		return 0.2 * p.Gears[0].MaxQPS
	}
	rep, err := loadgen.Run(ctx, sys.Conn, loadgen.Config{
		Pipeline: p.Pipeline, Items: images, Schedule: sched, Duration: 8 * time.Second, Timeout: time.Minute, Seed: 7,
	})
	if err != nil {
		t.Fatal(err)
	}
	if gears := rep.ByGear(); len(gears) < 2 {
		t.Fatalf("answers by gear %v: want at least two gears under a load of %.0f req/s", gears, peak)
	}
	// Both workers report the gear the controller wrote last.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctl, workers := gauges(reg)
		ok := len(workers) == 2
		for _, v := range workers {
			ok = ok && v == ctl
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller gear index %v, worker gear indexes %v", ctl, workers)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gauges returns the controller's gear index and each worker's.
func gauges(reg *prometheus.Registry) (float64, []float64) {
	return metrictest.Sum(reg, "cascade_controller_gear_index"), metrictest.Values(reg, "cascade_worker_gear_index")
}

// startLoad runs the load generator against sys in the background until
// cfg's load is sent or ctx ends; the report arrives on the channel
// returned. An error of the run fails the test.
func startLoad(ctx context.Context, t *testing.T, sys *system.System, cfg loadgen.Config) <-chan loadgen.Report {
	done := make(chan loadgen.Report, 1)
	go func() {
		rep, err := loadgen.Run(ctx, sys.Conn, cfg)
		if err != nil {
			t.Error(err)
		}
		done <- rep
	}()
	return done
}

// runLoad runs the load generator against sys and fails the test unless
// every request sent got exactly one result and none was an error.
func runLoad(ctx context.Context, t *testing.T, sys *system.System, cfg loadgen.Config) loadgen.Report {
	t.Helper()
	rep, err := loadgen.Run(ctx, sys.Conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Lost != 0 || rep.Duplicates != 0 || len(rep.Outcomes) != rep.Sent {
		t.Fatalf("sent %d, results %d, lost %d, duplicates %d", rep.Sent, len(rep.Outcomes), rep.Lost, rep.Duplicates)
	}
	if errs := rep.ErrorCounts(); len(errs) != 0 {
		t.Fatalf("error results: %v", errs)
	}
	return rep
}

// TestPartitionedQueues serves the hand-written MNIST plan with every
// model's queue split into three partitions (CASCADE_QUEUE_PARTITIONS) and
// two workers: the topology has a stream per partition, envelopes land in
// all of them, and every request gets exactly one result.
func TestPartitionedQueues(t *testing.T) {
	reg := prometheus.NewRegistry()
	sys := startPlan(t, handwrittenPlan, 2,
		map[string]string{"CASCADE_WORKER_RUNNERS": "1", "CASCADE_QUEUE_PARTITIONS": "3"}, reg)
	p := sys.Plan
	images := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep := runLoad(ctx, t, sys, loadgen.Config{
		Pipeline: p.Pipeline, Items: images, Schedule: func(time.Duration) float64 { return 0.5 * p.Gears[0].MaxQPS },
		Duration: 4 * time.Second, Timeout: time.Minute, Seed: 11,
	})
	if rep.Sent == 0 {
		t.Fatalf("sent %d items", rep.Sent)
	}
	first := p.Gears[0].Cascade[0].Model
	for part := range 3 {
		name := wire.ModelPartitionStream(p.Pipeline, first, part, 3)
		s, err := sys.JS.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.LastSeq == 0 {
			t.Errorf("partition stream %s never received an envelope", name)
		}
	}
	if _, err := sys.JS.Stream(ctx, wire.ModelStream(p.Pipeline, first)); err == nil {
		t.Errorf("the unpartitioned stream of %s exists beside its partitions", first)
	}
}

// TestBatchedRequestsThroughTheCascade sends MNIST images 16 to a request,
// as 8-bit batched inputs, through the real cascade: every item gets
// exactly one result, in its place, and the answers are as accurate as the
// gear promises.
func TestBatchedRequestsThroughTheCascade(t *testing.T) {
	// Pinned to the most accurate gear: unpinned, the controller shifts to
	// cheaper gears as soon as the load passes the plan's max_qps, and the
	// accuracy asked for here would depend on the machine's speed.
	sys := startPlan(t, handwrittenPlan, 1, map[string]string{"CASCADE_GEAR": "accurate"}, nil)
	p := sys.Plan
	gi := p.GearByID("accurate")
	if gi < 0 {
		t.Fatal("the hand-written plan has no gear \"accurate\"")
	}
	gear := p.Gears[gi]
	images := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep := runLoad(ctx, t, sys, loadgen.Config{
		Pipeline: p.Pipeline, Items: images, Concurrency: 8, MaxRequests: 2048, BatchItems: 16,
		UINT8Scale: p.Input.UINT8Scale, Timeout: time.Minute, Seed: 5,
	})
	if rep.Sent != 2048 {
		t.Fatalf("sent %d items", rep.Sent)
	}
	seen := map[int]int{}
	for _, o := range rep.Outcomes {
		seen[o.Index]++
	}
	if len(seen) != 2048 {
		t.Errorf("%d distinct images answered, want 2048", len(seen))
	}
	if acc, want := rep.Accuracy(), gear.Predicted.Accuracy-0.01; acc < want {
		t.Errorf("accuracy %.4f, want at least %.4f (gear %s's predicted accuracy less a point)", acc, want, gear.ID)
	}
	t.Logf("2048 items in 128 requests: accuracy %.2f%%, %.0f items/s", 100*rep.Accuracy(), rep.Throughput())
}

// TestEndToEndLatencyOnEveryDoor: every door's requests are timed end to
// end, by whoever answers the caller: the workers for msgpack request-reply
// and durable jobs, the ingress for JSON and batched requests.
func TestEndToEndLatencyOnEveryDoor(t *testing.T) {
	reg := prometheus.NewRegistry()
	sys := startPlan(t, handwrittenPlan, 1, nil, reg)
	images := testImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := loadgen.Run(ctx, sys.Conn, loadgen.Config{Pipeline: sys.Plan.Pipeline, Items: images, Concurrency: 4, MaxRequests: 40, Timeout: 30 * time.Second})
	if err != nil || rep.Answered != 40 {
		t.Fatalf("direct requests: %d answered, %v", rep.Answered, err)
	}
	if _, err := loadgen.Run(ctx, sys.Conn, loadgen.Config{Pipeline: sys.Plan.Pipeline, Items: images, Concurrency: 2, MaxRequests: 64, BatchItems: 16, Timeout: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	codec := wire.NewCodec()
	for i := range 5 {
		body, err := codec.EncodeRequest(&wire.Request{ID: fmt.Sprintf("job-%d", i), Input: wire.FP32Tensor(mnist.ItemShape(), images.Item(i))})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sys.JS.Publish(ctx, wire.JobsSubject(sys.Plan.Pipeline, "e2e"), body); err != nil {
			t.Fatal(err)
		}
	}
	count := func(name, door string) uint64 { return uint64(metrictest.Sum(reg, name, "door", door)) }
	deadline := time.Now().Add(30 * time.Second)
	for count("cascade_worker_request_duration_seconds", "jobs") < 5 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	// Start's readiness probe is one more msgpack request.
	if got := count("cascade_worker_request_duration_seconds", "nats"); got < 40 || got > 41 {
		t.Errorf("workers timed %d msgpack request-reply requests, want 40 (41 with Start's probe)", got)
	}
	if got := count("cascade_worker_request_duration_seconds", "jobs"); got != 5 {
		t.Errorf("workers timed %d jobs, want 5", got)
	}
	if got := count("cascade_ingress_request_duration_seconds", "nats"); got != 4 {
		t.Errorf("the ingress timed %d batched requests, want 4", got)
	}
}
