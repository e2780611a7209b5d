package plan

import (
	"math"
	"strings"
	"testing"
)

// TestOverheadCPUCurve: with a cpu_load curve the overhead is read between
// the measured points (falling per request as the load rises), from the
// idle CPU below the first and along the last segment above the last;
// without one it is the line of request_overhead_ms.
func TestOverheadCPUCurve(t *testing.T) {
	line := Overheads{RequestOverheadMs: 0.3, IdleCPUMsPerS: 10}
	if got := line.OverheadCPUMsPerS(1000); got != 310 {
		t.Errorf("line at 1000/s: %v, want 310", got)
	}
	curve := Overheads{IdleCPUMsPerS: 20, CPULoad: []CPUPoint{{QPS: 1000, CPUMsPerS: 220}, {QPS: 4000, CPUMsPerS: 520}, {QPS: 10000, CPUMsPerS: 820}}}
	for _, c := range []struct{ q, want float64 }{
		{0, 20}, {500, 120}, {1000, 220}, {2500, 370}, {4000, 520}, {7000, 670}, {10000, 820}, {16000, 1120},
	} {
		if got := curve.OverheadCPUMsPerS(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("curve at %v/s: %v, want %v", c.q, got, c.want)
		}
	}
	// Per request the curve's overhead falls with the load; the line's
	// through its first point would charge 10000/s 2.2 s of CPU per second.
	if a, b := curve.OverheadCPUMsPerS(1000)/1000, curve.OverheadCPUMsPerS(10000)/10000; !(b < a/2) {
		t.Errorf("per request %v ms at 1000/s, %v at 10000/s: want it to fall", a, b)
	}
	bad := Overheads{CPULoad: []CPUPoint{{QPS: 1000, CPUMsPerS: 1}, {QPS: 500, CPUMsPerS: 2}, {QPS: -1, CPUMsPerS: 3}, {QPS: 2000, CPUMsPerS: math.NaN()}, {QPS: 3000, CPUMsPerS: 4, FloorMs: 2, FloorP95Ms: 1}}}
	err := bad.Validate()
	if err == nil {
		t.Fatal("a bad cpu_load validated")
	}
	joined := err.Error()
	for _, want := range []string{"cpu_load[1]: loads must increase", "cpu_load[2]: qps must be > 0", "cpu_load[3]: qps must be > 0", "cpu_load[4]: floor_p95_ms 1 is below floor_ms 2"} {
		if !strings.Contains(joined, want) {
			t.Errorf("problems %q lack %q", joined, want)
		}
	}
}

// TestLatencyFloorAt: the floor is read at the share of the cores busy,
// each point of the curve at its CPU over the cores; below the first it is
// the first's, above the last it rises along the last segment; a curve
// without floors leaves the constant floor.
func TestLatencyFloorAt(t *testing.T) {
	o := Overheads{LatencyFloorMs: 0.5, LatencyFloorP95Ms: 1.5, CPULoad: []CPUPoint{
		{QPS: 1000, CPUMsPerS: 400, FloorMs: 0.4, FloorP95Ms: 1},   // busy 0.2 of 2 cores
		{QPS: 5000, CPUMsPerS: 1000, FloorMs: 0.6, FloorP95Ms: 3},  // 0.5
		{QPS: 9000, CPUMsPerS: 1600, FloorMs: 1.6, FloorP95Ms: 13}, // 0.8
	}}
	for _, c := range []struct{ busy, median, p95 float64 }{
		{0, 0.4, 1}, {0.2, 0.4, 1}, {0.35, 0.5, 2}, {0.5, 0.6, 3}, {0.65, 1.1, 8}, {0.8, 1.6, 13}, {0.95, 2.1, 18},
	} {
		median, p95 := o.LatencyFloorAt(c.busy, 2)
		if math.Abs(median-c.median) > 1e-9 || math.Abs(p95-c.p95) > 1e-9 {
			t.Errorf("busy %v: floor %v / %v, want %v / %v", c.busy, median, p95, c.median, c.p95)
		}
	}
	// On 4 cores the same CPU is half the share: 0.4 busy is the 0.8 point.
	if median, p95 := o.LatencyFloorAt(0.4, 4); math.Abs(median-1.6) > 1e-9 || math.Abs(p95-13) > 1e-9 {
		t.Errorf("busy 0.4 of 4 cores: %v / %v, want 1.6 / 13", median, p95)
	}
	noFloors := Overheads{LatencyFloorMs: 0.5, LatencyFloorP95Ms: 1.5, CPULoad: []CPUPoint{{QPS: 1000, CPUMsPerS: 400}, {QPS: 5000, CPUMsPerS: 1000}}}
	if median, p95 := noFloors.LatencyFloorAt(0.9, 2); median != 0.5 || p95 != 1.5 {
		t.Errorf("without floors on the curve: %v / %v, want the constant 0.5 / 1.5", median, p95)
	}
}
