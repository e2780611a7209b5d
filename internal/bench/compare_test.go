package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// checkProbe holds a probe's verdict to its numbers: a pass is within the
// SLO, at or above the floor, with nothing lost.
func checkProbe(t *testing.T, system string, p CompareProbe, slo float64) {
	t.Helper()
	if p.OK && (p.P95Ms > slo || p.Run.Lost > 0 || p.Run.Aborted || p.Accuracy < p.Floor || p.Run.Answered == 0) {
		t.Errorf("%s: probe at %.0f/s passed with p95 %.1f ms, accuracy %v < floor %v, %d lost, aborted %v",
			system, p.Load, p.P95Ms, p.Accuracy, p.Floor, p.Run.Lost, p.Run.Aborted)
	}
	if !p.OK && p.Reason == "" {
		t.Errorf("%s: probe at %.0f/s missed without a reason", system, p.Load)
	}
	if p.Run.Answered > 0 && math.Abs(p.Floor-(p.Run.ReferenceAccuracy-0.001)) > 1e-9 {
		t.Errorf("%s: floor %v is not the reference accuracy %v less 0.1 point", system, p.Floor, p.Run.ReferenceAccuracy)
	}
}

// TestCompareQuickEndToEnd runs the comparison with tiny probes on the
// real embedded system and the built-in plan, and checks the report's
// structure and invariants, not its numbers.
func TestCompareQuickEndToEnd(t *testing.T) {
	ctx, lib := wholeSystemTest(t, "four whole systems", 4*time.Minute)
	var progress bytes.Buffer
	c, err := Compare(ctx, CompareConfig{
		Live:      Live{Runners: 2, ONNXRuntimeLib: lib, Items: testImages(t, 2000), TempDir: t.TempDir(), Progress: &progress},
		Quick:     true,
		Probing:   Probing{Warmup: 200 * time.Millisecond, Duration: 300 * time.Millisecond, Budget: 1500 * time.Millisecond},
		Multiples: []float64{1, 2},
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	t.Log(progress.String())
	if c.Single.Model != "resnet" || c.Single.Gear == "" || !c.Settings.PairedFloor || !(c.Single.ReferenceAccuracy > 0.99) {
		t.Errorf("single model %+v, paired floor %v", c.Single, c.Settings.PairedFloor)
	}
	if len(c.Switching) < 2 || c.Switching[0].Model != "resnet" {
		t.Errorf("model-switching plan %+v", c.Switching)
	}
	var names []string
	for _, s := range c.Systems {
		names = append(names, s.System)
	}
	if !slices.Equal(names, CompareSystems) {
		t.Fatalf("systems %v, want %v", names, CompareSystems)
	}
	single := c.Systems[0]
	if single.Pinned != c.Single.Gear || single.Cascade != "resnet" || c.Systems[1].Pinned != "" || c.Systems[2].Pinned != "g1" || c.Systems[3].Pinned != "" {
		t.Errorf("pins: %q %q %q %q", single.Pinned, c.Systems[1].Pinned, c.Systems[2].Pinned, c.Systems[3].Pinned)
	}
	slo := c.Settings.SLOP95Ms
	for _, s := range c.Systems {
		if len(s.Probes) == 0 {
			t.Errorf("%s: no probes", s.System)
		}
		passed, missed := 0.0, math.Inf(1)
		for _, p := range s.Probes {
			checkProbe(t, s.System, p, slo)
			if p.OK {
				passed = max(passed, p.Load)
			} else if p.Load > s.CapacityQPS {
				missed = min(missed, p.Load)
			}
		}
		if s.CapacityQPS != passed {
			t.Errorf("%s: capacity %v, highest passed probe %v", s.System, s.CapacityQPS, passed)
		}
		if s.FirstMissQPS != 0 && s.FirstMissQPS != missed {
			t.Errorf("%s: first miss %v, lowest missed probe above the capacity %v", s.System, s.FirstMissQPS, missed)
		}
		want := 0.0
		if single.CapacityQPS > 0 {
			want = s.CapacityQPS / single.CapacityQPS
		}
		if math.Abs(s.Ratio-want) > 1e-9 {
			t.Errorf("%s: ratio %v, want %v", s.System, s.Ratio, want)
		}
		for _, p := range s.AtMultiples {
			checkProbe(t, s.System, p, slo)
			if math.Abs(p.Load-p.Multiple*single.CapacityQPS) > 1e-6 {
				t.Errorf("%s: run at %g× is at %v/s, single model's capacity %v", s.System, p.Multiple, p.Load, single.CapacityQPS)
			}
		}
		if s.System == SystemCascadeServe && single.CapacityQPS > 0 && len(s.AtMultiples) != 2 {
			t.Errorf("CascadeServe: %d runs at multiples, want 2", len(s.AtMultiples))
		}
	}
	if c.Headline != c.Systems[3].Ratio {
		t.Errorf("headline %v, CascadeServe's ratio %v", c.Headline, c.Systems[3].Ratio)
	}
	var table bytes.Buffer
	if err := c.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ISO-ACCURACY CAPACITY", "CascadeServe", "model switching", "static cascade", "headline:"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back Comparison
	if err := json.Unmarshal(b, &back); err != nil || len(back.Systems) != 4 {
		t.Fatalf("JSON round trip: %v", err)
	}
	if c.SwitchingPlan() == nil {
		t.Error("no model-switching plan kept for a trace")
	}
	dir := t.TempDir()
	if err := PlotComparison(c, dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "compare.png")); err != nil || fi.Size() == 0 {
		t.Errorf("compare.png: %v", err)
	}
}

// TestTraceEndToEnd replays a short bursty trace against the three
// systems and checks the report's structure.
func TestTraceEndToEnd(t *testing.T) {
	ctx, lib := wholeSystemTest(t, "three whole systems", 3*time.Minute)
	var progress bytes.Buffer
	tr, err := Trace(ctx, TraceConfig{
		Live:   Live{Runners: 2, ONNXRuntimeLib: lib, Items: testImages(t, 2000), TempDir: t.TempDir(), Progress: &progress},
		Warmup: 200 * time.Millisecond,
		// Bursts to 3 × 0.4 of 4,000/s, above g1's 4,060/s: CascadeServe may switch.
		Load: Bursty{Capacity: 4000, Duration: 4 * time.Second, BurstLength: time.Second, BurstEvery: 2 * time.Second},
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	t.Log(progress.String())
	if len(tr.Systems) != 3 || tr.Systems[0].System != SystemSwitching || tr.Systems[1].Pinned != "g1" || tr.Systems[2].System != SystemCascadeServe {
		t.Fatalf("systems %+v", tr.Systems)
	}
	for _, s := range tr.Systems {
		if s.Seconds != 4 || len(s.PerSecond) != 4 {
			t.Errorf("%s: %d seconds", s.System, len(s.PerSecond))
		}
		answered := 0
		for _, sec := range s.PerSecond {
			answered += sec.Answered
			if sec.Answered > 0 && (sec.Gear == "" || sec.GearIndex < 1) {
				t.Errorf("%s second %d: no gear", s.System, sec.Second)
			}
		}
		if answered != s.Answered || s.Answered+s.Lost+errorTotal(s.Errors) != s.Sent {
			t.Errorf("%s: %d answered by second, %d in all; sent %d, lost %d, errors %v", s.System, answered, s.Answered, s.Sent, s.Lost, s.Errors)
		}
		if s.OverSLOShare < 0 || s.OverSLOShare > 1 || s.OverSLOSeconds > s.Seconds {
			t.Errorf("%s: %d seconds over the SLO, share %v", s.System, s.OverSLOSeconds, s.OverSLOShare)
		}
		if s.Pinned != "" && len(s.Switches) > 0 {
			t.Errorf("%s: pinned, yet %d switches", s.System, len(s.Switches))
		}
		for _, sw := range s.Switches {
			if sw.From == sw.To || sw.To == "" {
				t.Errorf("%s: switch %+v", s.System, sw)
			}
		}
		if len(s.Switches) > 0 && s.ApplyLatency.Count == 0 {
			t.Errorf("%s: %d switches and no apply latency observed", s.System, len(s.Switches))
		}
	}
	var table bytes.Buffer
	if err := tr.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "SECONDS P95 > SLO") {
		t.Errorf("table:\n%s", table.String())
	}
	if err := PlotTrace(tr, t.TempDir()); err != nil {
		t.Fatal(err)
	}
}

func errorTotal(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func TestBurstyRate(t *testing.T) {
	b := Bursty{Capacity: 1000}
	b.defaults()
	if b.Duration != 2*time.Minute || b.Base != 0.4 || b.Burst != 3 || b.Ramp != 0.25 {
		t.Fatalf("defaults %+v", b)
	}
	at := func(s float64) float64 { return b.Rate(time.Duration(s * float64(time.Second))) }
	for _, c := range []struct {
		t, want float64
	}{
		{0, 100},  // a quarter of the base at the start
		{15, 250}, // half-way up the 30 s ramp
		{25, 3 * 0.4 * 1000 * (0.25 + 0.75*25.0/30)}, // a burst on the ramp
		{45, 400},                                // the base
		{55, 1200},                               // a burst
		{119.999, 1200 * (0.25 + 0.75*0.001/30)}, // the last burst, at the ramp's foot
	} {
		if got := at(c.t); math.Abs(got-c.want) > 0.5 {
			t.Errorf("rate at %vs: %v, want %v", c.t, got, c.want)
		}
	}
	none := Bursty{Capacity: 1000, BurstLength: -1, Ramp: -1}
	none.defaults()
	if none.Rate(25*time.Second) != 400 || none.Rate(0) != 400 {
		t.Errorf("no bursts, no ramp: %v %v", none.Rate(25*time.Second), none.Rate(0))
	}
}

func TestApplyHistogramSummary(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: applyMetric, Buckets: prometheus.ExponentialBuckets(50e-6, 2, 19)})
	reg.MustRegister(h)
	h.Observe(0.5) // before: subtracted
	before := gatherApply(reg)
	for range 99 {
		h.Observe(0.003)
	}
	h.Observe(0.09)
	s := gatherApply(reg).minus(before).summary()
	if s.Count != 100 {
		t.Fatalf("count %d", s.Count)
	}
	if !(s.P50Ms > 1.6 && s.P50Ms <= 3.2) || !(s.P99Ms > 1.6 && s.P99Ms <= 3.2) || s.P99BoundMs != 3.2 {
		t.Errorf("p50 %v, p99 %v (≤ %v)", s.P50Ms, s.P99Ms, s.P99BoundMs)
	}
	if math.Abs(s.MeanMs-(99*3+90)/100.0) > 1e-6 {
		t.Errorf("mean %v", s.MeanMs)
	}
	if got := gatherApply(prometheus.NewRegistry()).summary(); got.Count != 0 {
		t.Errorf("empty registry: %+v", got)
	}
}

func TestPerSecondAndSwitches(t *testing.T) {
	start := time.Unix(1000, 0)
	p := &plan.Plan{Gears: []plan.Gear{{ID: "g1"}, {ID: "g2"}}}
	b := Bursty{Capacity: 100, Duration: 3 * time.Second}
	b.defaults()
	rep := loadgen.Report{Outcomes: []loadgen.Outcome{
		{Sent: start.Add(100 * time.Millisecond), Latency: 10 * time.Millisecond, Gear: "g1", Correct: true},
		{Sent: start.Add(900 * time.Millisecond), Latency: 90 * time.Millisecond, Gear: "g2"},
		{Sent: start.Add(950 * time.Millisecond), Latency: 20 * time.Millisecond, Gear: "g2", Correct: true},
		{Sent: start.Add(2500 * time.Millisecond), Code: wire.CodeDeadlineExceeded},
	}}
	secs := perSecond(rep, start, b, p)
	if len(secs) != 3 || secs[0].Answered != 3 || secs[0].P95Ms != 90 || secs[0].Gear != "g2" || secs[0].GearIndex != 2 ||
		math.Abs(secs[0].Accuracy-2.0/3) > 1e-9 || secs[1].Answered != 0 || secs[2].Errors != 1 {
		t.Errorf("seconds %+v", secs)
	}
	sw := switchesOf([]wire.GearState{
		{Gear: "g1", AtUnixNano: start.UnixNano()},
		{Gear: "g2", AtUnixNano: start.Add(1500 * time.Millisecond).UnixNano(), Reason: "load"},
		{Gear: "g2", AtUnixNano: start.Add(1600 * time.Millisecond).UnixNano()},
		{Gear: "g1", AtUnixNano: start.Add(2 * time.Second).UnixNano()},
	}, start)
	if len(sw) != 2 || sw[0].From != "g1" || sw[0].To != "g2" || sw[0].AtSeconds != 1.5 || sw[1].To != "g1" {
		t.Errorf("switches %+v", sw)
	}
}
