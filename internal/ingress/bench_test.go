package ingress_test

import (
	"math/rand/v2"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

var mnistInput = plan.Input{Name: "input", Datatype: "FP32", Shape: []int64{1, 28, 28}, Classes: 10, UINT8Scale: 1.0 / 255}

func BenchmarkCanonicalizeMNIST(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	vals := make([]float32, 784)
	pix := make([]byte, 784)
	for i := range vals {
		vals[i] = rng.Float32()
		pix[i] = byte(rng.IntN(256))
	}
	for _, bc := range []struct {
		name string
		t    wire.Tensor
	}{
		{"FP32", wire.FP32Tensor([]int64{1, 1, 28, 28}, vals)},
		{"UINT8", wire.Tensor{Datatype: wire.UINT8, Shape: []int64{1, 28, 28}, Data: pix}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ingress.Canonicalize(bc.t, mnistInput); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRoundTrip is one request at a time through the ingress, the
// tiny pipeline's first-model stream and an in-test responder, back to the
// caller: the ingress's share of a request's latency plus one JetStream hop.
func BenchmarkRoundTrip(b *testing.B) {
	e := startEnv(b)
	ti := e.ready(b, nil)
	e.respond(b, "small")
	nc := e.srv.Connect(b)
	msgpackBody := encodeRequest(b, validRequest(""))
	jsonBody := oipBody("", "FP32", "[2,2]", "[0.5,0.5,0.5,0.5]", "")
	b.Run("nats-msgpack", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if res, _ := natsRequest(b, nc, msgpackBody, false); res.Error != nil {
				b.Fatal(res.Error)
			}
		}
	})
	b.Run("nats-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if res, _ := natsRequest(b, nc, []byte(jsonBody), true); res.Error != nil {
				b.Fatal(res.Error)
			}
		}
	})
	b.Run("http", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if status, _, raw := httpInfer(b, ti.url, pipeline, jsonBody); status != 200 {
				b.Fatalf("%d %s", status, raw)
			}
		}
	})
}
