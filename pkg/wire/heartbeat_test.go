package wire

import (
	"math"
	"testing"
)

func TestLatencyQuantile(t *testing.T) {
	b := make([]uint64, len(LatencyBucketsMs)+1)
	if !math.IsNaN(LatencyQuantile(b, 0.5)) {
		t.Error("quantile of nothing is not NaN")
	}
	b[LatencyBucket(1.5)] = 50 // (1, 2]
	b[LatencyBucket(40)] = 50  // (30, 50]
	if got := LatencyQuantile(b, 0.5); got != 2 {
		t.Errorf("p50 = %v, want 2 (top of the first half's bucket)", got)
	}
	if got := LatencyQuantile(b, 0.95); math.Abs(got-48) > 1e-9 {
		t.Errorf("p95 = %v, want 48 (interpolated in (30, 50])", got)
	}
	b[len(b)-1] = 1000
	if got := LatencyQuantile(b, 0.99); got != LatencyBucketsMs[len(LatencyBucketsMs)-1] {
		t.Errorf("p99 in the overflow bucket = %v", got)
	}
}
