package client_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/system/systemtest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/client"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// startSystem runs the all-in-one system (embedded nats-server, controller,
// ingress, one stage worker) serving the built-in MNIST plan.
func startSystem(t *testing.T) *system.System {
	t.Helper()
	orttest.Library(t, onnxrt.FindLibrary)
	return systemtest.Start(t, system.Config{DataDir: t.TempDir(), NATSPort: -1, Workers: 1})
}

// uint8Image is item i as UINT8 bytes (the test images are bytes / 255).
func uint8Image(images *dataset.Set, i int) []byte {
	v := images.Item(i)
	b := make([]byte, len(v))
	for j, x := range v {
		b[j] = byte(math.Round(float64(x) * 255))
	}
	return b
}

// TestClientAgainstTheSystem drives the real cascade through the client:
// single and batched requests, typed errors, an idempotent retry, and
// durable jobs read back with Results.
func TestClientAgainstTheSystem(t *testing.T) {
	sys := startSystem(t)
	images, err := mnist.TestImages()
	if err != nil {
		t.Fatal(err)
	}
	shape := sys.Plan.Input.Shape // [1, 28, 28]
	c, err := client.New(sys.Conn, sys.Plan.Pipeline, client.WithClient("client-test"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Single items, FP32 and UINT8.
	const n = 16
	labels := make([]int, n)
	right := 0
	for i := range n {
		res, err := c.InferFloat32(ctx, shape, images.Item(i), client.WithTimeout(10*time.Second))
		if err != nil {
			t.Fatalf("image %d: %v", i, err)
		}
		if res.AnsweredBy == "" || res.Pipeline != sys.Plan.Pipeline || res.Client != "client-test" || len(res.Items) != 0 {
			t.Fatalf("image %d: result %+v", i, res)
		}
		labels[i] = res.Label
		if res.Label == int(images.Labels[i]) {
			right++
		}
	}
	if right < n-1 {
		t.Errorf("%d of %d images right", right, n)
	}
	res, err := c.Infer(ctx, wire.Tensor{Datatype: wire.UINT8, Shape: shape, Data: uint8Image(images, 0)}, client.WithID("uint8-0"))
	if err != nil || res.ID != "uint8-0" || res.Label != labels[0] {
		t.Fatalf("UINT8 image 0: %v, %+v (FP32 label %d)", err, res, labels[0])
	}

	// A batch [8, 1, 28, 28]: eight results in input order.
	const batch = 8
	var values []float32
	for i := range batch {
		values = append(values, images.Item(i)...)
	}
	res, err = c.InferFloat32(ctx, append([]int64{batch}, shape...), values, client.WithID("batch-1"))
	if err != nil {
		t.Fatal(err)
	}
	if res.ID != "batch-1" || len(res.Items) != batch {
		t.Fatalf("batch result %+v", res)
	}
	for i, it := range res.Items {
		if it.Error != nil || it.Index != i || it.AnsweredBy == "" {
			t.Fatalf("batch item %d: %+v", i, it)
		}
		if it.Label != labels[i] {
			t.Logf("batch item %d: label %d, alone %d (a near-tie)", i, it.Label, labels[i])
		}
	}

	// Invalid input: a typed error.
	res, err = c.InferFloat32(ctx, []int64{1, 27, 27}, make([]float32, 27*27), client.WithID("bad-shape"))
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeInvalidInput || res == nil || res.Error != we {
		t.Fatalf("wrong shape: %v, %+v", err, res)
	}

	// An Idempotency-Key: the retry gets the first result, another input
	// under the same key is refused.
	first, err := c.InferFloat32(ctx, shape, images.Item(1), client.WithIdempotencyKey("client-test-key-1"))
	if err != nil {
		t.Fatal(err)
	}
	retry, err := c.InferFloat32(ctx, shape, images.Item(1), client.WithIdempotencyKey("client-test-key-1"))
	if err != nil {
		t.Fatal(err)
	}
	if retry.AdmittedUnixNano != first.AdmittedUnixNano || retry.Label != first.Label {
		t.Fatalf("the retry was computed again: first %+v, retry %+v", first, retry)
	}
	if _, err := c.InferFloat32(ctx, shape, images.Item(2), client.WithIdempotencyKey("client-test-key-1")); wire.CodeOf(err) != wire.CodeInvalidInput {
		t.Fatalf("another input under the same key: %v", err)
	}

	// Durable jobs, one of them invalid, and their results.
	want := map[string]int{}
	for i := range 3 {
		job, err := c.Submit(ctx, &wire.Request{Input: wire.FP32Tensor(shape, images.Item(i))}, client.WithMsgID(fmt.Sprint("client-test-job-", i)))
		if err != nil {
			t.Fatal(err)
		}
		want[job.ID] = labels[i]
	}
	bad, err := c.Submit(ctx, &wire.Request{ID: "bad-job", Input: wire.FP32Tensor([]int64{2}, []float32{0, 0})})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	got := map[string]*wire.Result{}
	err = c.Results(rctx, func(r *wire.Result) error {
		got[r.ID] = r
		if len(got) == len(want)+1 {
			stop()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Results: %v (got %d results)", err, len(got))
	}
	for id, label := range want {
		if r := got[id]; r == nil || r.Error != nil || r.Label != label || r.AnsweredBy == "" {
			t.Errorf("job %s: result %+v, want label %d", id, r, label)
		}
	}
	if r := got[bad.ID]; r == nil || r.Error == nil || r.Error.Code != wire.CodeInvalidInput {
		t.Errorf("invalid job: result %+v", r)
	}
}
