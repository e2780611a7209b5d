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
	curve := Overheads{IdleCPUMsPerS: 20, CPULoad: []CPUPoint{{1000, 220}, {4000, 520}, {10000, 820}}}
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
	bad := Overheads{CPULoad: []CPUPoint{{1000, 1}, {500, 2}, {-1, 3}, {2000, math.NaN()}}}
	err := bad.Validate()
	if err == nil {
		t.Fatal("a bad cpu_load validated")
	}
	joined := err.Error()
	for _, want := range []string{"cpu_load[1]: loads must increase", "cpu_load[2]: qps must be > 0", "cpu_load[3]: qps must be > 0"} {
		if !strings.Contains(joined, want) {
			t.Errorf("problems %q lack %q", joined, want)
		}
	}
}
