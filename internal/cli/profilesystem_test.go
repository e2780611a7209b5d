package cli

import (
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// TestCPUCurveLeavesOutSaturatedLoads checks that a load whose live p95 is
// past --system-max-p95 stays out of the overhead CPU curve (its CPU time is
// the cores' cap, not the load's cost), that 0 keeps every load, and that
// fewer than two loads left give no curve.
func TestCPUCurveLeavesOutSaturatedLoads(t *testing.T) {
	results := []systemResult{
		{QPS: 20000, RequestOverheadMs: 0.08, P95: 37 * time.Millisecond},
		{QPS: 1000, RequestOverheadMs: 0.5, P95: 3 * time.Millisecond},
		{QPS: 25000, RequestOverheadMs: 0.068, P95: 74 * time.Millisecond},
	}
	got := cpuCurve(results, 50*time.Millisecond)
	want := []plan.CPUPoint{{QPS: 1000, CPUMsPerS: 500}, {QPS: 20000, CPUMsPerS: 1600}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("curve with max p95 50ms: %v, want %v", got, want)
	}
	if all := cpuCurve(results, 0); len(all) != 3 || all[2].QPS != 25000 {
		t.Fatalf("curve without a max p95: %v, want all three loads in order", all)
	}
	if one := cpuCurve(results, 10*time.Millisecond); one != nil {
		t.Fatalf("one load within the max p95 gave a curve: %v", one)
	}
}
