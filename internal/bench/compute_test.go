package bench

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planner"
)

// runtimeOrSkip opens ONNX Runtime, skipping the test when the library is
// not installed unless CASCADE_REQUIRE_ORT=1.
func runtimeOrSkip(tb testing.TB) *onnxrt.Runtime {
	tb.Helper()
	lib, err := onnxrt.FindLibrary(os.Getenv)
	if err != nil {
		if errors.Is(err, onnxrt.ErrLibraryNotFound) && os.Getenv("CASCADE_REQUIRE_ORT") != "1" {
			tb.Skipf("skipping: %v (install it with scripts/install-onnxruntime.sh)", err)
		}
		tb.Fatal(err)
	}
	rt, err := onnxrt.NewRuntime(lib)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rt.Close() })
	return rt
}

func testImages(tb testing.TB, n int) *dataset.Set {
	tb.Helper()
	set, err := mnist.TestImages()
	if err != nil {
		tb.Fatal(err)
	}
	sub, err := set.Slice(0, n)
	if err != nil {
		tb.Fatal(err)
	}
	return sub
}

// mnistPlan is the built-in MNIST plan.
func mnistPlan(tb testing.TB) *plan.Plan {
	tb.Helper()
	p, err := mnist.Plan()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// testPlan is the MNIST plan with the given gears in place of its own.
func testPlan(tb testing.TB, gears ...plan.Gear) *plan.Plan {
	tb.Helper()
	p, err := plan.LoadFile("../../models/mnist/plan.json")
	if err != nil {
		tb.Fatal(err)
	}
	p.Gears = gears
	return p
}

func TestModelThroughputCountsWholeBatches(t *testing.T) {
	rt := runtimeOrSkip(t)
	items := testImages(t, 100)
	onnx, err := mnist.Model("linear")
	if err != nil {
		t.Fatal(err)
	}
	r, err := ModelThroughput(context.Background(), rt, ModelRunConfig{Model: "linear", ONNX: onnx, Items: items, Batch: 32, Sessions: 3})
	if err != nil {
		t.Fatal(err)
	}
	// Zero duration: exactly one batch per session.
	if r.Items != 3*32 || r.Sessions != 3 || r.Batch != 32 || r.Model != "linear" {
		t.Fatalf("got %+v, want one batch of 32 on each of 3 sessions", r)
	}
	if !(r.ItemsPerSec > 0) {
		t.Fatalf("items/s %v, want positive", r.ItemsPerSec)
	}
	if _, err := ModelThroughput(context.Background(), rt, ModelRunConfig{Model: "linear", ONNX: onnx, Items: items, Batch: 101}); err == nil {
		t.Fatal("batch larger than the item set: no error")
	}
}

// reference decides every item the straightforward way: every model of the
// cascade on every item, one batch of all items, then the first stage whose
// confidence reaches its threshold answers. It returns the answering stage
// and whether the answer is right, per item.
func reference(t *testing.T, rt *onnxrt.Runtime, p *plan.Plan, g plan.Gear, items *dataset.Set) (stage []int, correct []bool) {
	t.Helper()
	n := items.Len()
	stage = make([]int, n)
	correct = make([]bool, n)
	decided := make([]bool, n)
	for j, st := range g.Cascade {
		onnx, err := mnist.Model(st.Model)
		if err != nil {
			t.Fatal(err)
		}
		s, err := rt.Open(st.Model, onnx, onnxrt.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		probs, err := s.Run(items.Data, n, make([]float32, n*s.Info().NumClasses))
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		m, _ := p.Model(st.Model)
		c := len(probs) / n
		for i := range n {
			if decided[i] {
				continue
			}
			row := probs[i*c : (i+1)*c]
			plan.Calibrate(row, m.Temperature)
			conf, label := plan.Confidence(p.Confidence, row)
			if plan.Answers(conf, st.Threshold, j == len(g.Cascade)-1) {
				decided[i], stage[i], correct[i] = true, j, int32(label) == items.Labels[i]
			}
		}
	}
	return stage, correct
}

func TestCascadeThroughputRoutesLikeTheReplay(t *testing.T) {
	rt := runtimeOrSkip(t)
	const n = 1000
	items := testImages(t, n)
	tests := []struct {
		name     string
		gear     plan.Gear
		sessions int
	}{
		{"one stage", plan.Gear{ID: "one", Cascade: []plan.Stage{{Model: "linear"}}, Batching: plan.Batching{MaxBatch: 64}}, 2},
		{"two stages", plan.Gear{ID: "two", Cascade: []plan.Stage{{Model: "linear", Threshold: 0.8}, {Model: "mlp"}}, Batching: plan.Batching{MaxBatch: 32}}, 2},
		// Per-stage batch sizes, three stages, an odd split of the items.
		{"three stages", plan.Gear{ID: "three", Cascade: []plan.Stage{
			{Model: "linear", Threshold: 0.9, MaxBatch: 50}, {Model: "mlp_small", Threshold: 0.95, MaxBatch: 7}, {Model: "cnn_small"},
		}, Batching: plan.Batching{MaxBatch: 16}}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := testPlan(t, tc.gear)
			r, err := CascadeThroughput(context.Background(), rt, CascadeRunConfig{Plan: p, Gear: 0, Models: mnist.Model, Items: items, Sessions: tc.sessions})
			if err != nil {
				t.Fatal(err)
			}
			k := len(tc.gear.Cascade)
			if r.Passes != 1 || r.Items != n || len(r.Reached) != k || len(r.AnsweredBy) != k {
				t.Fatalf("got %+v, want one pass answering %d items over %d stages", r, n, k)
			}
			// Every item is answered exactly once, and what a stage does
			// not answer reaches the next.
			sum := 0
			for j := range k {
				sum += r.AnsweredBy[j]
				if j+1 < k && r.Reached[j+1] != r.Reached[j]-r.AnsweredBy[j] {
					t.Errorf("stage %d: reached %d answered %d, next reached %d", j, r.Reached[j], r.AnsweredBy[j], r.Reached[j+1])
				}
			}
			if r.Reached[0] != n || sum != n || r.Reached[k-1] != r.AnsweredBy[k-1] {
				t.Errorf("reached %v answered %v for %d items", r.Reached, r.AnsweredBy, n)
			}
			// The batched, queued, sharded run decides like the
			// straightforward one. Batch size may change the last bits
			// of a probability, so allow an item or two on a threshold.
			stage, correct := reference(t, rt, p, tc.gear, items)
			want := make([]int, k)
			wantCorrect := 0
			for i := range n {
				want[stage[i]]++
				if correct[i] {
					wantCorrect++
				}
			}
			for j := range k {
				if d := r.AnsweredBy[j] - want[j]; d < -2 || d > 2 {
					t.Errorf("stage %d answered %d items, the reference %d", j, r.AnsweredBy[j], want[j])
				}
			}
			if d := r.Correct - wantCorrect; d < -2 || d > 2 {
				t.Errorf("%d correct, the reference %d", r.Correct, wantCorrect)
			}
			if r.Accuracy != float64(r.Correct)/n {
				t.Errorf("accuracy %v for %d/%d correct", r.Accuracy, r.Correct, n)
			}
			for j, b := range r.MeanBatch {
				limit := tc.gear.Batching.MaxBatch
				if mb := tc.gear.Cascade[j].MaxBatch; mb > 0 {
					limit = mb
				}
				if r.Reached[j] > 0 && (b < 1 || b > float64(limit)) {
					t.Errorf("stage %d mean batch %.1f outside [1, %d]", j, b, limit)
				}
			}
			t.Logf("%s: reached %v answered %v correct %d (reference answered %v correct %d)", r.Cascade, r.Reached, r.AnsweredBy, r.Correct, want, wantCorrect)
		})
	}
}

// TestCascadeThroughputMatchesTestReplay compares the in-process cascade
// with the test replay made by `cascadeserve replay`: the escalation counts
// the planner would compute on the test set are the ones served.
func TestCascadeThroughputMatchesTestReplay(t *testing.T) {
	rt := runtimeOrSkip(t)
	replay, err := mnist.TestReplay()
	if err != nil {
		t.Skipf("no test replay yet: %v", err)
	}
	const n = 2000
	items := testImages(t, n)
	g := plan.Gear{ID: "g", Cascade: []plan.Stage{{Model: "linear", Threshold: 0.8}, {Model: "mlp_small", Threshold: 0.9}, {Model: "mlp"}}, Batching: plan.Batching{MaxBatch: 64}}
	p := testPlan(t, g)
	temps := map[string]float64{}
	for _, m := range p.Models {
		temps[m.Name] = m.Temperature
	}
	ev, err := planner.NewEvaluator(replay, planner.EvaluatorConfig{Ladder: p.Ladder, Metric: p.Confidence, Temperatures: temps})
	if err != nil {
		t.Fatal(err)
	}
	at, err := ev.AnsweredAt(g.Cascade)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]int, len(g.Cascade))
	for _, j := range at[:n] {
		want[j]++
	}
	r, err := CascadeThroughput(context.Background(), rt, CascadeRunConfig{Plan: p, Models: mnist.Model, Items: items})
	if err != nil {
		t.Fatal(err)
	}
	for j := range want {
		if d := r.AnsweredBy[j] - want[j]; d < -2 || d > 2 {
			t.Errorf("stage %d answered %d of %d items, the replay %d", j, r.AnsweredBy[j], n, want[j])
		}
	}
}

// BenchmarkCascadePass measures one in-process pass of 1,000 MNIST test
// images through a two-stage cascade (linear@0.8 > mlp, batch 32) on two
// sessions (ns/op includes opening the sessions; items/s is the pass
// alone): go test -run '^$' -bench CascadePass ./internal/bench
func BenchmarkCascadePass(b *testing.B) {
	rt := runtimeOrSkip(b)
	items := testImages(b, 1000)
	p := testPlan(b, plan.Gear{ID: "two", Cascade: []plan.Stage{{Model: "linear", Threshold: 0.8}, {Model: "mlp"}}, Batching: plan.Batching{MaxBatch: 32}})
	b.ReportAllocs()
	n, secs := 0, 0.0
	for b.Loop() {
		r, err := CascadeThroughput(context.Background(), rt, CascadeRunConfig{Plan: p, Models: mnist.Model, Items: items})
		if err != nil {
			b.Fatal(err)
		}
		n += r.Items
		secs += r.Seconds
	}
	if secs > 0 {
		b.ReportMetric(float64(n)/secs, "items/s")
	}
}
