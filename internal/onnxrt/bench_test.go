package onnxrt

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchBatchSizes are the batch sizes every Run benchmark measures.
var benchBatchSizes = []int{1, 8, 32, 128}

// BenchmarkRun measures a warm Run of the tiny linear classifier, reporting
// the time per item and allocations per call.
//
//	go test -run '^$' -bench BenchmarkRun -benchtime 2s ./internal/onnxrt
func BenchmarkRun(b *testing.B) {
	rt := newRuntime(b)
	benchmarkSession(b, openTestModel(b, rt, "linear_logits", SessionOptions{}))
}

// benchmarkSession runs s at every size in benchBatchSizes as sub-benchmarks.
func benchmarkSession(b *testing.B, s *Session) {
	info := s.Info()
	for _, n := range benchBatchSizes {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, uint64(n)))
			x := randomItems(rng, n, info.ItemSize(), 0, 1)
			dst := make([]float32, n*info.NumClasses)
			if _, err := s.Run(x, n, dst); err != nil { // warm this batch size
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Run(x, n, dst); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/item")
		})
	}
}
