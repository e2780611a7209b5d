package stageworker

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// digitsDir holds a ladder of UINT8-input models (see
// internal/system/testdata/digits/make_digits.py).
var digitsDir = filepath.Join("..", "system", "testdata", "digits")

// digitsPlan serves model "small" of the digits ladder: UINT8 [N,28,28].
func digitsPlan(t *testing.T, uint8Scale float64) *plan.Plan {
	t.Helper()
	p := &plan.Plan{
		Version: plan.FormatVersion, Pipeline: "digits", SLO: plan.SLO{P95Ms: 50}, Capacity: 1,
		Confidence: plan.MetricMargin,
		Input:      plan.Input{Name: "input", Datatype: "FP32", Shape: []int64{28, 28}, Classes: 10, UINT8Scale: uint8Scale},
		Ladder:     []string{"small"}, Overheads: plan.Overheads{HopOverheadMs: 0.3},
		Models: []plan.Model{{Name: "small", File: "small.onnx",
			Profile: plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: 0.05}, {Batch: 64, LatencyMs: 1}}}}},
		Gears:      []plan.Gear{gear("solo", 100, 16, 20, "small")},
		Hysteresis: plan.DefaultHysteresis(),
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestUint8ModelGetsTheItemsBytes: a UINT8-input model gets a UINT8 item's
// bytes as they are, and a FP32 item of the same pixels (byte/255) as the
// same bytes, so both get the very same answer; a FP32 item that is not
// bytes times the scale is answered invalid_input.
func TestUint8ModelGetsTheItemsBytes(t *testing.T) {
	p := digitsPlan(t, 1.0/255)
	e := startEnv(t, p)
	rep := e.listen(t, replySubject)
	e.startWorker(t, func(c *Config) { c.Pipeline, c.ModelDir = "digits", digitsDir }, hooks{})

	set, err := dataset.ReadIDXFiles(filepath.Join("..", "..", "models", "mnist", "data", "t10k-images-idx3-ubyte.gz"),
		filepath.Join("..", "..", "models", "mnist", "data", "t10k-labels-idx1-ubyte.gz"), nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	var ids []string
	for i := range n {
		u8 := newItem(p, fmt.Sprintf("u8-%d", i), "solo", nil, time.Now().Add(time.Minute))
		u8.Input = wire.Tensor{Datatype: wire.UINT8, Shape: []int64{28, 28}, Data: set.ItemBytes(8000 + i)}
		f32 := newItem(p, fmt.Sprintf("f32-%d", i), "solo", set.Item(8000+i), time.Now().Add(time.Minute))
		for _, it := range []*wire.Item{u8, f32} {
			it.ReplyTo = replySubject
			ids = append(ids, it.ID)
			e.admit(t, "small", it)
		}
	}
	junk := make([]float32, 28*28)
	junk[100] = 0.5 // 127.5/255: not a byte
	bad := newItem(p, "not-bytes", "solo", junk, time.Now().Add(time.Minute))
	bad.ReplyTo = replySubject
	e.admit(t, "small", bad)
	ids = append(ids, bad.ID)

	natstest.WaitFor(t, "replies", 30*time.Second, func() bool { got, _ := rep.snapshot(); return len(got) == len(ids) })
	got, _ := rep.snapshot()
	correct := 0
	for i := range n {
		u8, f32 := got[fmt.Sprintf("u8-%d", i)][0], got[fmt.Sprintf("f32-%d", i)][0]
		if u8.Error != nil || f32.Error != nil {
			t.Fatalf("image %d: errors %v, %v", i, u8.Error, f32.Error)
		}
		if u8.Label != f32.Label || u8.Confidence != f32.Confidence {
			t.Errorf("image %d: UINT8 item answered %d (%v), the same pixels as FP32 %d (%v)", i, u8.Label, u8.Confidence, f32.Label, f32.Confidence)
		}
		if u8.Label == int(set.Labels[8000+i]) {
			correct++
		}
	}
	if correct < n*3/4 {
		t.Errorf("%d of %d images right: the model did not get its bytes", correct, n)
	}
	if r := got["not-bytes"][0]; r.Error == nil || r.Error.Code != wire.CodeInvalidInput || !strings.Contains(r.Error.Message, "not a byte") {
		t.Errorf("FP32 item that is not bytes: %+v, want invalid_input", r.Error)
	}
}

// TestUint8ModelNeedsAScale: a plan without a UINT8 scale cannot feed a
// UINT8-input model: the worker refuses to start, naming the model.
func TestUint8ModelNeedsAScale(t *testing.T) {
	p := digitsPlan(t, 0)
	e := startEnv(t, p)
	w := e.startWorker(t, func(c *Config) { c.Pipeline, c.ModelDir = "digits", digitsDir }, hooks{})
	select {
	case err := <-w.done:
		if err == nil || !strings.Contains(err.Error(), `model "small" takes UINT8 input`) {
			t.Fatalf("worker: %v, want a refusal naming the UINT8 model", err)
		}
		w.cancel() // Run has returned already
		w.cancel = nil
	case <-time.After(30 * time.Second):
		t.Fatal("worker started without a UINT8 scale")
	}
}
