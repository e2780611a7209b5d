package controller

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// loadTestPlan loads testdata/three-gears.json: gears accurate (max 100 qps,
// medium → large), balanced (200, small → medium) and cheap (400, small);
// downshift factor 0.8, drained backlog 0.05 s, dwell 1 s, window 1 s.
func loadTestPlan(t *testing.T) *plan.Plan {
	t.Helper()
	p, err := plan.LoadFile("testdata/three-gears.json")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// step is one observation of a scenario, at a time relative to its start.
type step struct {
	at      time.Duration
	qps     float64
	backlog map[string]Backlog
	cold    bool // Warm = false
	// want is the gear id after the step; dir the decision's direction.
	want string
	dir  Direction
	// reason, if set, must appear in the decision's reason.
	reason string
}

func TestPolicyScenarios(t *testing.T) {
	pending := func(model string, n int64) map[string]Backlog { return map[string]Backlog{model: {Pending: n}} }
	inFlight := func(model string, n int64) map[string]Backlog { return map[string]Backlog{model: {AckPending: n}} }
	s := time.Second
	ms := time.Millisecond
	tests := []struct {
		name  string
		start string // gear at time 0
		steps []step
	}{
		{
			name:  "spike up jumps straight to the gear for the load",
			start: "accurate",
			steps: []step{
				{at: 0, qps: 50, want: "accurate", dir: Hold},
				{at: 250 * ms, qps: 350, want: "cheap", dir: Up, reason: "load 350.0 qps > max 100.0 of accurate"},
				{at: 500 * ms, qps: 390, want: "cheap", dir: Hold},
			},
		},
		{
			name:  "spike up one gear",
			start: "accurate",
			steps: []step{{at: 0, qps: 150, want: "balanced", dir: Up}},
		},
		{
			name:  "load beyond the cheapest gear holds it",
			start: "cheap",
			steps: []step{{at: 0, qps: 1000, want: "cheap", dir: Hold, reason: "overloaded"}},
		},
		{
			name:  "up at once even right after a switch (no dwell upwards)",
			start: "accurate",
			steps: []step{
				{at: 0, qps: 150, want: "balanced", dir: Up},
				{at: 10 * ms, qps: 300, want: "cheap", dir: Up},
			},
		},
		{
			name:  "waiting backlog that drains too slowly moves up",
			start: "accurate",
			steps: []step{
				// 60 qps + 100 waiting / 1 s = 160 required > 100: balanced
				// covers 160.
				{at: 0, qps: 60, backlog: pending("medium", 100), want: "balanced", dir: Up, reason: "drains in 2.50s > 1s"},
			},
		},
		{
			name:  "large waiting backlog jumps to the gear that drains it",
			start: "accurate",
			steps: []step{{at: 0, qps: 60, backlog: pending("large", 300), want: "cheap", dir: Up}},
		},
		{
			name:  "waiting backlog that drains in time holds",
			start: "accurate",
			steps: []step{{at: 0, qps: 60, backlog: pending("medium", 30), want: "accurate", dir: Hold}},
		},
		{
			name:  "items in flight are not a reason to go up",
			start: "accurate",
			steps: []step{{at: 0, qps: 60, backlog: inFlight("medium", 500), want: "accurate", dir: Hold}},
		},
		{
			// The shared runners drain what an older gear left at small
			// before anything else (TestPolicyPerModelPoolsWeighTheirOwnQueues:
			// not with per-model pools).
			name:  "waiting items of models outside the gear are a reason to go up",
			start: "accurate",
			steps: []step{{at: 0, qps: 60, backlog: pending("small", 500), want: "cheap", dir: Up, reason: "backlog 500 waiting at accurate"}},
		},
		{
			name:  "plateau holds the gear",
			start: "accurate",
			steps: []step{
				{at: 0, qps: 150, want: "balanced", dir: Up},
				{at: 1 * s, qps: 160, want: "balanced", dir: Hold},
				{at: 2 * s, qps: 155, want: "balanced", dir: Hold},
				{at: 5 * s, qps: 150, want: "balanced", dir: Hold},
				// Below accurate's max but not below 0.8 of it.
				{at: 10 * s, qps: 90, want: "balanced", dir: Hold, reason: "not below 0.80 × 100.0 of accurate"},
			},
		},
		{
			name:  "slow decay steps down gear by gear",
			start: "cheap",
			steps: []step{
				{at: 0, qps: 380, want: "cheap", dir: Hold},
				{at: 2 * s, qps: 300, want: "cheap", dir: Hold},
				{at: 4 * s, qps: 200, want: "cheap", dir: Hold},
				{at: 6 * s, qps: 159, want: "balanced", dir: Down, reason: "load 159.0 qps < 0.80 × 200.0 of balanced"},
				{at: 6*s + 500*ms, qps: 120, want: "balanced", dir: Hold},
				{at: 8 * s, qps: 90, want: "balanced", dir: Hold},
				{at: 10 * s, qps: 79, want: "accurate", dir: Down},
				{at: 12 * s, qps: 10, want: "accurate", dir: Hold, reason: "most accurate"},
			},
		},
		{
			name:  "a quick drop jumps down several gears",
			start: "cheap",
			steps: []step{{at: 5 * s, qps: 20, want: "accurate", dir: Down}},
		},
		{
			name:  "noise around a gear's capacity switches once and stays",
			start: "accurate",
			steps: []step{
				{at: 0, qps: 95, want: "accurate", dir: Hold},
				{at: 250 * ms, qps: 105, want: "balanced", dir: Up},
				{at: 500 * ms, qps: 95, want: "balanced", dir: Hold},
				{at: 1500 * ms, qps: 98, want: "balanced", dir: Hold},
				{at: 2500 * ms, qps: 103, want: "balanced", dir: Hold},
				{at: 3500 * ms, qps: 85, want: "balanced", dir: Hold},
				{at: 4500 * ms, qps: 101, want: "balanced", dir: Hold},
			},
		},
		{
			name:  "dwell delays the way down",
			start: "accurate",
			steps: []step{
				{at: 0, qps: 150, want: "balanced", dir: Up},
				{at: 250 * ms, qps: 10, want: "balanced", dir: Hold, reason: "dwell"},
				{at: 999 * ms, qps: 10, want: "balanced", dir: Hold, reason: "dwell"},
				{at: 1000 * ms, qps: 10, want: "accurate", dir: Down},
			},
		},
		{
			name:  "oscillating load cannot switch faster than the dwell",
			start: "accurate",
			steps: []step{
				{at: 0, qps: 150, want: "balanced", dir: Up},
				{at: 250 * ms, qps: 10, want: "balanced", dir: Hold},
				{at: 500 * ms, qps: 150, want: "balanced", dir: Hold},
				{at: 750 * ms, qps: 10, want: "balanced", dir: Hold},
				{at: 1000 * ms, qps: 10, want: "accurate", dir: Down},
				{at: 1250 * ms, qps: 150, want: "balanced", dir: Up},
				{at: 1500 * ms, qps: 10, want: "balanced", dir: Hold, reason: "dwell"},
			},
		},
		{
			name:  "an undrained backlog holds the accurate gear back",
			start: "balanced",
			steps: []step{
				// accurate needs total backlog ≤ 0.05 × 100 = 5.
				{at: 2 * s, qps: 10, backlog: inFlight("small", 20), want: "balanced", dir: Hold, reason: "not drained"},
				{at: 3 * s, qps: 10, backlog: map[string]Backlog{"small": {Pending: 3, AckPending: 3}}, want: "balanced", dir: Hold},
				{at: 4 * s, qps: 10, backlog: map[string]Backlog{"small": {Pending: 2, AckPending: 3}}, want: "accurate", dir: Down},
			},
		},
		{
			name:  "backlog drained enough for an intermediate gear",
			start: "cheap",
			steps: []step{
				// accurate needs ≤ 5, balanced ≤ 10.
				{at: 2 * s, qps: 10, backlog: inFlight("large", 8), want: "balanced", dir: Down, reason: "backlog 8 ≤ 10"},
			},
		},
		{
			name:  "no way down before the rate window was observed",
			start: "cheap",
			steps: []step{
				{at: 2 * s, qps: 0, cold: true, want: "cheap", dir: Hold, reason: "warming up"},
				{at: 2*s + 250*ms, qps: 0, want: "accurate", dir: Down},
			},
		},
		{
			name:  "up is allowed while cold",
			start: "accurate",
			steps: []step{{at: 0, qps: 500, cold: true, want: "cheap", dir: Up}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runPolicy(t, tt.start, tt.steps, func(i int, now time.Time) Observation {
				sp := tt.steps[i]
				return Observation{Now: now, QPS: sp.qps, Backlog: sp.backlog, Warm: !sp.cold}
			})
		})
	}
}

// runPolicy drives a policy for the test plan from gear start through
// steps, making the observation obs(i, now) at step i, and checks every
// decision: the gear and direction the step wants, a direction that
// matches the move, the step's reason (if any) and a reason always given.
func runPolicy(t *testing.T, start string, steps []step, obs func(i int, now time.Time) Observation) {
	t.Helper()
	p := loadTestPlan(t)
	pol, err := NewPolicy(p, time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	st := State{Gear: p.GearByID(start), Since: t0}
	if st.Gear < 0 {
		t.Fatalf("no gear %q", start)
	}
	for i, sp := range steps {
		now := t0.Add(sp.at)
		o := obs(i, now)
		d := pol.Decide(st, o)
		got := p.Gears[d.Gear].ID
		if got != sp.want || d.Direction != sp.dir {
			t.Fatalf("step %d (t=%v qps=%v runners=%d known=%v): got %s/%s, want %s/%s (reason %q)",
				i, sp.at, sp.qps, o.Runners, o.RunnersKnown, got, d.Direction, sp.want, sp.dir, d.Reason)
		}
		if d.Direction != direction(st.Gear, d.Gear) {
			t.Fatalf("step %d: direction %s does not match %d → %d", i, d.Direction, st.Gear, d.Gear)
		}
		if sp.reason != "" && !strings.Contains(d.Reason, sp.reason) {
			t.Fatalf("step %d: reason %q does not contain %q", i, d.Reason, sp.reason)
		}
		if d.Reason == "" {
			t.Fatalf("step %d: empty reason", i)
		}
		if d.Gear != st.Gear {
			st = State{Gear: d.Gear, Since: now}
		}
	}
}

// TestPolicyLiveCapacity drives the policy with the live capacity changing:
// the test plan is made for 2 runners, so with 1 runner every gear carries
// half its max_qps (accurate 50, balanced 100, cheap 200) and with 4 twice.
func TestPolicyLiveCapacity(t *testing.T) {
	s := time.Second
	ms := time.Millisecond
	type capStep struct {
		step
		runners int // live runners; -1: none seen yet (plan capacity assumed)
	}
	tests := []struct {
		name  string
		start string
		steps []capStep
	}{
		{
			name:  "losing half the runners moves up at once",
			start: "accurate",
			steps: []capStep{
				{step{at: 0, qps: 80, want: "accurate", dir: Hold}, 2},
				{step{at: 250 * ms, qps: 80, want: "balanced", dir: Up, reason: "load 80.0 qps > max 50.0 of accurate (max_qps scaled to 1 of 2 planned runners)"}, 1},
				{step{at: 500 * ms, qps: 80, want: "balanced", dir: Hold}, 1},
			},
		},
		{
			name:  "runners back: down again with the usual hysteresis",
			start: "balanced",
			steps: []capStep{
				{step{at: 0, qps: 60, want: "balanced", dir: Hold, reason: "not below 0.80 × 50.0 of accurate"}, 1},
				// Back at 2 runners right after a switch: the dwell holds.
				{step{at: 500 * ms, qps: 60, want: "balanced", dir: Hold, reason: "dwell"}, 2},
				{step{at: 1 * s, qps: 60, want: "accurate", dir: Down, reason: "load 60.0 qps < 0.80 × 100.0 of accurate"}, 2},
			},
		},
		{
			name:  "a pool larger than planned carries more in the accurate gear",
			start: "cheap",
			steps: []capStep{
				{step{at: 2 * s, qps: 150, want: "balanced", dir: Down}, 2},
				{step{at: 4 * s, qps: 150, want: "accurate", dir: Down, reason: "< 0.80 × 200.0 of accurate"}, 4},
			},
		},
		{
			name:  "the capacity shrinking under a backlog moves up on the backlog",
			start: "accurate",
			steps: []capStep{
				// 30 qps + 30 waiting / 1 s = 60 required > 50 (accurate at 1 runner).
				{step{at: 0, qps: 30, backlog: map[string]Backlog{"medium": {Pending: 30}}, want: "balanced", dir: Up, reason: "(max 50.0)"}, 1},
			},
		},
		{
			name:  "no runner left: any load selects the cheapest gear",
			start: "accurate",
			steps: []capStep{
				{step{at: 0, qps: 0, want: "accurate", dir: Hold}, 0},
				{step{at: 250 * ms, qps: 5, want: "cheap", dir: Up, reason: "scaled to 0 of 2"}, 0},
				{step{at: 500 * ms, qps: 5, want: "cheap", dir: Hold, reason: "overloaded"}, 0},
			},
		},
		{
			name:  "before the first heartbeat the plan's capacity is assumed",
			start: "accurate",
			steps: []capStep{
				{step{at: 0, qps: 90, want: "accurate", dir: Hold}, -1},
				{step{at: 250 * ms, qps: 90, want: "balanced", dir: Up}, 1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps := make([]step, len(tt.steps))
			for i, sp := range tt.steps {
				steps[i] = sp.step
			}
			runPolicy(t, tt.start, steps, func(i int, now time.Time) Observation {
				sp := tt.steps[i]
				return Observation{Now: now, QPS: sp.qps, Backlog: sp.backlog, Warm: true, Runners: sp.runners, RunnersKnown: sp.runners >= 0}
			})
		})
	}
}

func TestPolicyFactor(t *testing.T) {
	p := loadTestPlan(t)
	pol, err := NewPolicy(p, time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		o    Observation
		want float64
	}{
		{Observation{}, 1},
		{Observation{Runners: 2, RunnersKnown: true}, 1},
		{Observation{Runners: 1, RunnersKnown: true}, 0.5},
		{Observation{Runners: 6, RunnersKnown: true}, 3},
		{Observation{RunnersKnown: true}, 0},
	} {
		if got := pol.Factor(tt.o); got != tt.want {
			t.Errorf("Factor(%d runners, known %v) = %v, want %v", tt.o.Runners, tt.o.RunnersKnown, got, tt.want)
		}
		if g := pol.ScaledGears(tt.o); g[2].MaxQPS != 400*tt.want || p.Gears[2].MaxQPS != 400 {
			t.Errorf("ScaledGears: cheap max %v (plan %v), want %v", g[2].MaxQPS, p.Gears[2].MaxQPS, 400*tt.want)
		}
	}
}

func TestPolicyPinned(t *testing.T) {
	p := loadTestPlan(t)
	pol, err := NewPolicy(p, time.Second, "balanced")
	if err != nil {
		t.Fatal(err)
	}
	if got := pol.Initial(); got.Gear != 1 || got.Reason != "pinned" {
		t.Fatalf("Initial = %+v, want balanced, pinned", got)
	}
	now := time.Unix(100, 0)
	for _, tt := range []struct {
		from int
		qps  float64
		dir  Direction
	}{
		{from: 1, qps: 10_000, dir: Hold},
		{from: 1, qps: 0, dir: Hold},
		{from: 0, qps: 0, dir: Up},
		{from: 2, qps: 10_000, dir: Down},
	} {
		d := pol.Decide(State{Gear: tt.from, Since: now.Add(-time.Hour)}, Observation{Now: now, QPS: tt.qps, Warm: true,
			Backlog: map[string]Backlog{"small": {Pending: 100_000}}})
		if d.Gear != 1 || d.Direction != tt.dir {
			t.Errorf("from %d at %v qps: got gear %d %s, want 1 %s", tt.from, tt.qps, d.Gear, d.Direction, tt.dir)
		}
	}
}

func TestPolicyUnknownState(t *testing.T) {
	p := loadTestPlan(t)
	pol, err := NewPolicy(p, time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(100, 0)
	if d := pol.Decide(State{Gear: -1}, Observation{Now: now, QPS: 10, Warm: true}); d.Gear != 0 {
		t.Errorf("unknown gear at low load: got %d, want 0", d.Gear)
	}
	if d := pol.Decide(State{Gear: 7}, Observation{Now: now, QPS: 300, Warm: true}); d.Gear != 2 {
		t.Errorf("unknown gear at high load: got %d, want 2", d.Gear)
	}
	if d := pol.Initial(); d.Gear != 0 {
		t.Errorf("Initial gear %d, want 0", d.Gear)
	}
}

func TestNewPolicyErrors(t *testing.T) {
	p := loadTestPlan(t)
	if _, err := NewPolicy(p, time.Second, "turbo"); !errors.Is(err, ErrUnknownGear) {
		t.Errorf("pin unknown gear: err %v, want ErrUnknownGear", err)
	}
	if _, err := NewPolicy(p, 0, ""); err == nil {
		t.Error("zero upshift backlog accepted")
	}
	if _, err := NewPolicy(&plan.Plan{}, time.Second, ""); err == nil {
		t.Error("plan without gears accepted")
	}
}

// BenchmarkPolicyDecide measures one decision on the test plan (the
// controller makes 2-5 a second; this shows the policy is not the cost).
//
//	go test -run '^$' -bench PolicyDecide ./internal/controller
func BenchmarkPolicyDecide(b *testing.B) {
	p, err := plan.LoadFile("testdata/three-gears.json")
	if err != nil {
		b.Fatal(err)
	}
	pol, err := NewPolicy(p, time.Second, "")
	if err != nil {
		b.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	st := State{Gear: 2, Since: now.Add(-time.Minute)}
	obs := Observation{Now: now, QPS: 250, Warm: true, Backlog: map[string]Backlog{"small": {Pending: 3, AckPending: 30}, "medium": {}, "large": {}}}
	b.ReportAllocs()
	for b.Loop() {
		_ = pol.Decide(st, obs)
	}
}

// TestPolicyMovesDownOnThePeakOfTheHold: a dip of the measured rate shorter
// than the plan's downshift hold (PeakQPS still high) keeps the gear; the
// current rate alone still moves it up.
func TestPolicyMovesDownOnThePeakOfTheHold(t *testing.T) {
	p := loadTestPlan(t)
	p.Hysteresis.DownshiftHoldMs = 3000
	pol, err := NewPolicy(p, time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(100, 0)
	long := State{Gear: 2, Since: now.Add(-time.Hour)} // cheap, held long
	d := pol.Decide(long, Observation{Now: now, QPS: 20, PeakQPS: 380, Warm: true})
	if d.Gear != 2 || d.Direction != Hold || !strings.Contains(d.Reason, "load 380.0 qps (the peak of the last 3s) not below") {
		t.Errorf("dip within the hold: %+v, want cheap held on the peak", d)
	}
	d = pol.Decide(long, Observation{Now: now, QPS: 20, PeakQPS: 150, Warm: true})
	if d.Gear != 1 || d.Direction != Down || !strings.Contains(d.Reason, "load 150.0 qps (the peak of the last 3s) < 0.80 × 200.0 of balanced") {
		t.Errorf("peak 150: %+v, want down to balanced only", d)
	}
	d = pol.Decide(long, Observation{Now: now, QPS: 20, PeakQPS: 20, Warm: true})
	if d.Gear != 0 || d.Direction != Down {
		t.Errorf("the whole hold low: %+v, want down to accurate", d)
	}
	d = pol.Decide(State{Gear: 0, Since: now.Add(-time.Hour)}, Observation{Now: now, QPS: 150, PeakQPS: 150, Warm: true})
	if d.Gear != 1 || d.Direction != Up {
		t.Errorf("up at 150: %+v, want balanced", d)
	}
}

func TestPolicyCountsFirstStageBacklogInItems(t *testing.T) {
	pol := testPolicy(t, time.Second, nil)
	now := time.Unix(100, 0)
	in := State{Gear: 0, Since: now.Add(-time.Hour)}
	for _, tt := range []struct {
		name        string
		backlog     map[string]Backlog
		perEnvelope float64
		want        int
	}{
		// accurate (medium → large) carries 100 qps; at 80 qps 8 waiting
		// items drain in 0.4 s, 32 in 1.6 s > the 1 s allowed.
		{"messages as items when the envelope size is unknown", map[string]Backlog{"medium": {Pending: 8}}, 0, 0},
		{"a smaller mean than one item is read as one", map[string]Backlog{"medium": {Pending: 8}}, 0.5, 0},
		{"envelopes of four items are four times the backlog", map[string]Backlog{"medium": {Pending: 8}}, 4, 1},
		{"a later stage's messages count one item each", map[string]Backlog{"large": {Pending: 8}}, 4, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := pol.Decide(in, Observation{Now: now, QPS: 80, Warm: true, Backlog: tt.backlog, ItemsPerEnvelope: tt.perEnvelope})
			if d.Gear != tt.want {
				t.Errorf("gear %d (%s: %s), want %d", d.Gear, d.Direction, d.Reason, tt.want)
			}
		})
	}
}

func TestPolicyMovesUpOnTheShortWindow(t *testing.T) {
	pol := testPolicy(t, time.Second, func(p *plan.Plan) { p.Hysteresis.UpshiftWindowMs = 250 })
	now := time.Unix(100, 0)
	in := State{Gear: 0, Since: now.Add(-time.Hour)}
	// accurate carries 100 qps, balanced 200: a burst to 150 qps seen by
	// the short window before the 1 s window reaches it.
	d := pol.Decide(in, Observation{Now: now, QPS: 70, RecentQPS: 150, Warm: true})
	if d.Gear != 1 || d.Direction != Up || !strings.Contains(d.Reason, "the last 250ms") {
		t.Errorf("burst in the short window: %+v, want up to balanced, naming the short window", d)
	}
	// A short window below the long one changes nothing.
	if d := pol.Decide(in, Observation{Now: now, QPS: 70, RecentQPS: 20, Warm: true}); d.Gear != 0 {
		t.Errorf("lull in the short window: %+v, want accurate held", d)
	}
	// Moves down never follow it: balanced with a quiet short window and a
	// long window at the downshift margin holds.
	if d := pol.Decide(State{Gear: 1, Since: now.Add(-time.Hour)}, Observation{Now: now, QPS: 90, RecentQPS: 10, Warm: true}); d.Gear != 1 {
		t.Errorf("quiet short window in balanced at 90 qps: %+v, want balanced held (90 is not below 0.8 × 100)", d)
	}
}

func TestPolicyPerModelPoolsWeighTheirOwnQueues(t *testing.T) {
	pol := testPolicy(t, time.Second, func(p *plan.Plan) { p.RunnerPool = plan.RunnerPoolPerModel })
	now := time.Unix(100, 0)
	d := pol.Decide(State{Gear: 0, Since: now.Add(-time.Hour)}, Observation{Now: now, QPS: 60, Warm: true,
		Backlog: map[string]Backlog{"small": {Pending: 500}}})
	if d.Gear != 0 {
		t.Errorf("500 waiting at small, which accurate does not use, with per-model runners: %+v, want accurate held", d)
	}
}

func TestPolicyDrainedCheckCountsItems(t *testing.T) {
	pol := testPolicy(t, time.Second, nil)
	now := time.Unix(100, 0)
	// balanced → accurate at 50 qps needs at most 0.05 s × 100 = 5 items
	// queued: 4 envelopes are 4 items, or 12 at 3 items each.
	in := State{Gear: 1, Since: now.Add(-time.Hour)}
	backlog := map[string]Backlog{"small": {Pending: 4}}
	if d := pol.Decide(in, Observation{Now: now, QPS: 50, Warm: true, Backlog: backlog}); d.Gear != 0 {
		t.Errorf("4 envelopes of unknown size: %+v, want down to accurate", d)
	}
	if d := pol.Decide(in, Observation{Now: now, QPS: 50, Warm: true, Backlog: backlog, ItemsPerEnvelope: 3}); d.Gear != 1 {
		t.Errorf("4 envelopes of 3 items: %+v, want balanced held until they drain", d)
	}
}

func TestPolicyUpshiftFactorKeepsAMargin(t *testing.T) {
	pol := testPolicy(t, time.Second, func(p *plan.Plan) { p.Hysteresis.UpshiftFactor = 0.9 })
	now := time.Unix(100, 0)
	for _, tt := range []struct {
		name string
		from int
		qps  float64
		want int
		dir  Direction
	}{
		// accurate ≤ 100, balanced ≤ 200, cheap ≤ 400.
		{"below the margin the gear holds", 0, 89, 0, Hold},
		{"above 0.9 of its max the gear moves up", 0, 95, 1, Up},
		{"to the gear whose max × 0.9 holds the load", 0, 185, 2, Up},
		{"the cheapest gear keeps its whole max", 2, 390, 2, Hold},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := pol.Decide(State{Gear: tt.from, Since: now}, Observation{Now: now, QPS: tt.qps, Warm: true})
			if d.Gear != tt.want || d.Direction != tt.dir {
				t.Errorf("%v qps from gear %d: %+v, want gear %d %s", tt.qps, tt.from, d, tt.want, tt.dir)
			}
			if tt.dir == Up && !strings.Contains(d.Reason, "× 0.90") {
				t.Errorf("reason %q does not name the margin", d.Reason)
			}
		})
	}
	// The backlog rule reads the margin too: at 80 qps, 15 waiting items
	// need 95 > 0.9 × 100.
	d := pol.Decide(State{Gear: 0, Since: now}, Observation{Now: now, QPS: 80, Warm: true, Backlog: map[string]Backlog{"medium": {Pending: 15}}})
	if d.Gear != 1 {
		t.Errorf("backlog over the margin: %+v, want balanced", d)
	}
}

func TestPolicyDoesNotMoveDownIntoItsOwnBacklogRule(t *testing.T) {
	pol := testPolicy(t, 100*time.Millisecond, func(p *plan.Plan) { p.Hysteresis.UpshiftFactor = 0.9 })
	now := time.Unix(100, 0)
	in := State{Gear: 1, Since: now.Add(-time.Hour)}
	backlog := map[string]Backlog{"small": {Pending: 4}}
	// accurate (max 100) at 50 qps: 4 waiting items drain in 0.1 s at the
	// 40 qps left below 0.9 × 100, so the move down is safe.
	if d := pol.Decide(in, Observation{Now: now, QPS: 50, Warm: true, Backlog: backlog}); d.Gear != 0 {
		t.Errorf("at 50 qps: %+v, want down to accurate", d)
	}
	// At 79 qps only 11 qps are left: the 4 items would take 0.36 s, and
	// accurate's backlog rule would send the gear straight back up.
	if d := pol.Decide(in, Observation{Now: now, QPS: 79, Warm: true, Backlog: backlog}); d.Gear != 1 {
		t.Errorf("at 79 qps: %+v, want balanced held", d)
	}
}

// testPolicy is the policy of the three-gear test plan, edited by edit
// (nil: as it is), with upshiftBacklog.
func testPolicy(t *testing.T, upshiftBacklog time.Duration, edit func(p *plan.Plan)) Policy {
	t.Helper()
	p := loadTestPlan(t)
	if edit != nil {
		edit(p)
	}
	pol, err := NewPolicy(p, upshiftBacklog, "")
	if err != nil {
		t.Fatal(err)
	}
	return pol
}
