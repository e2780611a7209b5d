package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// The systems Compare measures, in the order it measures them.
const (
	// SystemSingle is the ladder's most accurate model alone with dynamic
	// batching, pinned (what Triton or Ray Serve would serve).
	SystemSingle = "single"
	// SystemSwitching is model switching (MS+, INFaaS): one-model gears
	// switched by load by the controller.
	SystemSwitching = "switching"
	// SystemStatic is the plan's most accurate cascade, pinned.
	SystemStatic = "static"
	// SystemCascadeServe is the plan with the controller switching gears.
	SystemCascadeServe = "cascadeserve"
)

// CompareSystems are every system of Compare, in order.
var CompareSystems = []string{SystemSingle, SystemSwitching, SystemStatic, SystemCascadeServe}

// CompareConfig configures Compare. Zero values take the defaults in the
// comments (Quick's where it says so).
type CompareConfig struct {
	// Live is the plan (the built-in one when empty) and the systems; its
	// Items are the requests of every system, cycled from the first.
	Live
	// Systems are the systems measured besides SystemSingle, which is
	// always measured (default: all of CompareSystems).
	Systems []string
	// Quick shortens everything for CI-sized runs (about a minute on two
	// cores): shorter probes, a coarser search, smaller budgets for the
	// switching systems, and the loads at multiples of the single model's
	// capacity measured for CascadeServe and the single model only.
	Quick bool
	// RequestItems > 1 sends that many items per request; loads stay in
	// items/s.
	RequestItems int
	// Probing is each probe's length and the search's bounds: Warmup 2s
	// (Quick 1s; the controller of an unpinned system settles in it),
	// Duration 5s (Quick 1s), Budget 90s per system (Quick 10s; model
	// switching gets 70%), Factor 1.5 (Quick 2), Resolution 0.05 (Quick
	// 0.25), MaxErrorRate 0.001 by default. The single model's search starts
	// at its planned capacity (half of it with Quick), every other
	// system's at its plan's figure scaled by the single model's measured
	// over planned capacity: the machine's speed relative to the plan's.
	Probing
	// AccuracyDrop is how far below the single model's accuracy a probe's
	// accuracy may be and pass (default 0.001: 0.1 point).
	AccuracyDrop float64
	// Multiples of the single model's capacity at which every system's
	// accuracy and p95 are measured after its search, Warmup + Duration
	// each (default 1, 2, 4).
	Multiples []float64
	// Profile and Replay are what the plan was made from, for the
	// model-switching plan (defaults: the profile the plan carries, the
	// embedded MNIST validation replay).
	Profile *plan.ProfileFile
	Replay  *plan.Replay
	// Reference says for each item whether the single model answers it
	// right; each probe's accuracy floor is then the single model's
	// accuracy on exactly the items the probe answered, minus
	// AccuracyDrop (default: from the embedded MNIST test replay when the
	// items are the MNIST test images; without one the floor is the single
	// model's measured accuracy at its capacity).
	Reference []bool
}

func (c *CompareConfig) defaults() error {
	def := Probing{Warmup: 2 * time.Second, Duration: 5 * time.Second, Budget: 90 * time.Second, Factor: 1.5, Resolution: 0.05}
	if c.Quick {
		def = Probing{Warmup: time.Second, Duration: time.Second, Budget: 10 * time.Second, Factor: 2, Resolution: 0.25}
	}
	c.Probing.defaults(def)
	orDefault(&c.AccuracyDrop, 0.001)
	if len(c.Multiples) == 0 {
		c.Multiples = []float64{1, 2, 4}
	}
	if c.RequestItems < 1 {
		c.RequestItems = 1
	}
	if len(c.Systems) == 0 {
		c.Systems = CompareSystems
	}
	for _, s := range c.Systems {
		if !slices.Contains(CompareSystems, s) {
			return fmt.Errorf("compare: unknown system %q (%s)", s, strings.Join(CompareSystems, ", "))
		}
	}
	return c.Live.defaults()
}

// Comparison is what Compare measured.
type Comparison struct {
	Environment Environment      `json:"environment"`
	Settings    CompareSettings  `json:"settings"`
	Single      SingleModel      `json:"single_model"`
	Switching   []SwitchingGear  `json:"switching_plan"`
	Systems     []SystemCapacity `json:"systems"`
	// Headline is CascadeServe's iso-accuracy capacity over the single
	// model's (0 when either was not measured or the single model's is 0).
	Headline float64 `json:"headline_cascadeserve_over_single"`

	// switching is the model-switching plan, for a trace after.
	switching *plan.Plan
}

// SwitchingPlan is the model-switching plan the comparison served.
func (c *Comparison) SwitchingPlan() *plan.Plan { return c.switching }

// clonePlan is a deep copy of p (without its model source).
func clonePlan(p *plan.Plan) (*plan.Plan, error) {
	b, err := p.Marshal()
	if err != nil {
		return nil, err
	}
	return plan.Parse(b)
}

// CompareSettings are the effective settings of a comparison.
type CompareSettings struct {
	SLOP95Ms        float64   `json:"slo_p95_ms"`
	MaxErrorRate    float64   `json:"max_error_rate"`
	AccuracyDrop    float64   `json:"accuracy_drop"`
	WarmupSeconds   float64   `json:"warmup_seconds"`
	DurationSeconds float64   `json:"duration_seconds"`
	BudgetSeconds   float64   `json:"budget_seconds"`
	Factor          float64   `json:"factor"`
	Resolution      float64   `json:"resolution"`
	Multiples       []float64 `json:"multiples"`
	RequestItems    int       `json:"request_items"`
	Quick           bool      `json:"quick,omitempty"`
	// PairedFloor: each probe's floor is the single model's accuracy on
	// the same items (from the reference), not one measured figure.
	PairedFloor bool    `json:"paired_floor"`
	Seconds     float64 `json:"seconds"`
}

// SingleModel is the single-model system's model and its accuracy.
type SingleModel struct {
	Model string `json:"model"`
	// Gear is the single-model gear served (of the model-switching plan,
	// with the batching the planner chose for the model alone); Batching
	// says whose batching it is.
	Gear     string  `json:"gear"`
	MaxBatch int     `json:"max_batch"`
	DelayMs  float64 `json:"max_delay_ms"`
	Batching string  `json:"batching"`
	// ReferenceAccuracy is the model's accuracy on every item (from the
	// reference; 0 without one); ValidationAccuracy the plan's.
	ReferenceAccuracy  float64 `json:"reference_accuracy,omitempty"`
	ValidationAccuracy float64 `json:"validation_accuracy"`
}

// SwitchingGear is one gear of the model-switching plan.
type SwitchingGear struct {
	Gear     string  `json:"gear"`
	Model    string  `json:"model"`
	MaxQPS   float64 `json:"max_qps"`
	Accuracy float64 `json:"predicted_accuracy"`
	MaxBatch int     `json:"max_batch"`
	DelayMs  float64 `json:"max_delay_ms"`
}

// SystemCapacity is one system's iso-accuracy capacity and what it keeps
// at multiples of the single model's.
type SystemCapacity struct {
	System string `json:"system"`
	Label  string `json:"label"`
	// Plan says which plan it serves; Pinned the gear, if pinned, and
	// Cascade that gear's cascade.
	Plan    string `json:"plan"`
	Pinned  string `json:"pinned,omitempty"`
	Cascade string `json:"cascade,omitempty"`
	// CapacityQPS is the highest load (items/s) passed: p95 within the
	// SLO, nothing lost, errors within the bound, accuracy at or above the
	// floor (0: no probe passed); FirstMissQPS the lowest missed load
	// above it (0: none, CapacityQPS is a lower bound).
	CapacityQPS  float64 `json:"capacity_qps"`
	FirstMissQPS float64 `json:"first_miss_qps,omitempty"`
	// Ratio is CapacityQPS over the single model's.
	Ratio float64 `json:"ratio_to_single"`
	// P95Ms, Accuracy, Floor and ByGear are the probe at the capacity's.
	P95Ms    float64        `json:"p95_ms"`
	Accuracy float64        `json:"accuracy"`
	Floor    float64        `json:"accuracy_floor"`
	ByGear   map[string]int `json:"by_gear,omitempty"`
	Stopped  string         `json:"stopped"`
	Seconds  float64        `json:"seconds"`
	Probes   []CompareProbe `json:"probes"`
	// AtMultiples are the runs at multiples of the single model's
	// capacity.
	AtMultiples []CompareProbe `json:"at_multiples,omitempty"`
}

// CompareProbe is one probe or run of a system at a load.
type CompareProbe struct {
	KneeProbe
	// Multiple is the load over the single model's capacity (in
	// AtMultiples).
	Multiple float64 `json:"multiple,omitempty"`
	Accuracy float64 `json:"accuracy"`
	Floor    float64 `json:"accuracy_floor"`
	Run      LoadRun `json:"run"`
}

// compareSystem is a system to measure: the plan it serves and how.
type compareSystem struct {
	name, label, planName string
	plan                  *plan.Plan
	planFile              string
	pin                   string
	start                 float64
	budget                time.Duration
	multiples             bool
}

var systemLabels = map[string]string{
	SystemSingle:       "single model, dynamic batching",
	SystemSwitching:    "model switching",
	SystemStatic:       "static cascade",
	SystemCascadeServe: "CascadeServe",
}

// Compare measures, on this machine, in one run, with the same SLO and the
// same items, the iso-accuracy capacity of four systems: the single model
// (the ladder's most accurate model alone, pinned, with the batching the
// planner chose for it), model switching (SwitchingPlan, unpinned), the
// static cascade (the plan's most accurate gear pinned) and CascadeServe
// (the plan, unpinned). Each runs on a fresh all-in-one system; its
// capacity is SearchKnee's highest open-loop Poisson load at which the live
// p95 is within the plan's SLO, nothing is lost, typed errors are at most
// MaxErrorRate and the accuracy is at least the single model's minus
// AccuracyDrop (measured at each probe: unpinned, the controller may have
// switched). Then, on the same system, it measures accuracy and p95 at
// Multiples of the single model's capacity. Misses are reported, not
// returned as errors.
func Compare(ctx context.Context, cfg CompareConfig) (*Comparison, error) {
	began := time.Now()
	p, err := configured(cfg.defaults, &cfg.Live)
	if err != nil {
		return nil, err
	}
	progress := cfg.progressf
	model := p.Ladder[len(p.Ladder)-1]
	if cfg.Reference == nil {
		cfg.Reference = testReference(p.Pipeline, cfg.Items.Labels, model)
	}
	out := newComparison(cfg, p, model)
	systems, cleanup, err := compareSystemsWith(ctx, cfg, p, model, out, nil, progress)
	defer cleanup()
	if err != nil {
		return nil, err
	}
	var single *SystemCapacity
	singlePlanned := systems[0].start
	for _, s := range systems {
		floor := cfg.probeFloor(single)
		singleQPS := 0.0
		switch {
		case single != nil && single.CapacityQPS > 0:
			singleQPS = single.CapacityQPS
			s.start *= min(max(singleQPS/singlePlanned, 0.05), 2)
		case cfg.Quick:
			// Overloaded probes cost the most (their backlog is waited
			// for): start below the plan's figure and step up.
			s.start /= 2
		}
		sc, err := withSystem(ctx, cfg.TempDir, cfg.compareSystemConfig(s), func(sys *system.System) (SystemCapacity, error) {
			return measureSystem(ctx, cfg, s, sys, floor, singleQPS, progress)
		})
		if err != nil {
			return nil, fmt.Errorf("compare, %s: %w", s.label, err)
		}
		out.Systems = append(out.Systems, sc)
		if s.name == SystemSingle {
			single = &out.Systems[len(out.Systems)-1]
		}
	}
	out.setRatios(single)
	out.Settings.Seconds = time.Since(began).Seconds()
	return out, nil
}

// newComparison is a comparison of the systems serving p (model is the
// ladder's most accurate) before anything is measured: where, with which
// settings, and the single model's predicted and reference accuracy.
func newComparison(cfg CompareConfig, p *plan.Plan, model string) *Comparison {
	out := &Comparison{
		Environment: cfg.environmentOf(p),
		Settings: CompareSettings{
			SLOP95Ms: p.SLO.P95Ms, MaxErrorRate: cfg.MaxErrorRate, AccuracyDrop: cfg.AccuracyDrop,
			WarmupSeconds: cfg.Warmup.Seconds(), DurationSeconds: cfg.Duration.Seconds(), BudgetSeconds: cfg.Budget.Seconds(),
			Factor: cfg.Factor, Resolution: cfg.Resolution, Multiples: cfg.Multiples, RequestItems: cfg.RequestItems,
			Quick: cfg.Quick, PairedFloor: cfg.Reference != nil,
		},
	}
	if m, ok := p.Model(model); ok {
		out.Single = SingleModel{Model: model, ValidationAccuracy: m.Accuracy}
	}
	if cfg.Reference != nil {
		out.Single.ReferenceAccuracy = trueShare(cfg.Reference)
	}
	return out
}

// probeFloor is the accuracy a probe's run must reach: the single model's
// on the same items less AccuracyDrop with a reference, else the single
// model's measured accuracy less AccuracyDrop once single is measured, else
// none.
func (c CompareConfig) probeFloor(single *SystemCapacity) func(LoadRun) float64 {
	switch {
	case c.Reference != nil:
		drop := c.AccuracyDrop
		return func(r LoadRun) float64 { return r.ReferenceAccuracy - drop }
	case single != nil:
		f := single.Accuracy - c.AccuracyDrop
		return func(LoadRun) float64 { return f }
	}
	return func(LoadRun) float64 { return 0 }
}

// setRatios sets every system's capacity over the single model's (when
// that is measured) and the headline, CascadeServe's ratio.
func (c *Comparison) setRatios(single *SystemCapacity) {
	for i := range c.Systems {
		if single != nil && single.CapacityQPS > 0 {
			c.Systems[i].Ratio = c.Systems[i].CapacityQPS / single.CapacityQPS
		}
		if c.Systems[i].System == SystemCascadeServe {
			c.Headline = c.Systems[i].Ratio
		}
	}
}

// compareSystemsWith plans model switching (unless ms is that plan) and
// lays out the systems: their plans written with their models into
// temporary folders (removed by cleanup).
func compareSystemsWith(ctx context.Context, cfg CompareConfig, p *plan.Plan, model string, out *Comparison, ms *plan.Plan, progress func(string, ...any)) ([]compareSystem, func(), error) {
	plans := &planWriter{parent: cfg.TempDir, src: modelSource(p)}
	ms, err := switchingPlanFor(ctx, cfg, p, ms, progress)
	if err != nil {
		return nil, plans.cleanup, err
	}
	out.switching = ms
	out.Switching = switchingGears(ms)
	progress("  model switching: %s", switchingSummary(out.Switching))
	msFile, err := plans.write(ms)
	if err != nil {
		return nil, plans.cleanup, err
	}
	single, err := singleSystem(p, ms, msFile, model, out, plans)
	if err != nil {
		return nil, plans.cleanup, err
	}
	systems := []compareSystem{single}

	builtin := cfg.PlanFile // empty: the built-in plan
	floor := out.Single.ValidationAccuracy - cfg.AccuracyDrop - 1e-9
	for _, name := range cfg.Systems {
		s := compareSystem{name: name, multiples: !cfg.Quick || name == SystemCascadeServe, budget: cfg.Budget}
		switch name {
		case SystemSingle:
			continue
		case SystemSwitching:
			s.plan, s.planFile, s.planName = ms, msFile, "model-switching plan"
			s.start = isoAccurateMax(ms, floor)
			if cfg.Quick {
				// Its iso-accurate gear is the single model's: two probes
				// tell.
				s.budget = cfg.Budget * 7 / 10
			}
		case SystemStatic:
			s.plan, s.planFile, s.planName, s.pin = p, builtin, "the plan", p.Gears[0].ID
			s.start = p.Gears[0].MaxQPS
		case SystemCascadeServe:
			s.plan, s.planFile, s.planName = p, builtin, "the plan"
			s.start = isoAccurateMax(p, floor)
		}
		systems = append(systems, s)
	}
	for i := range systems {
		systems[i].label = systemLabels[systems[i].name]
		if systems[i].budget == 0 {
			systems[i].budget = cfg.Budget
		}
		if !(systems[i].start > 0) {
			systems[i].start = systems[i].plan.Gears[0].MaxQPS
		}
	}
	return systems, plans.cleanup, nil
}

// planWriter writes plans, with their models read from src, into fresh
// temporary folders under parent; cleanup removes them all.
type planWriter struct {
	parent string
	src    ModelSource
	dirs   []string
}

// write writes d and its models into a new folder and returns the plan
// file's path.
func (w *planWriter) write(d *plan.Plan) (string, error) {
	dir, err := os.MkdirTemp(w.parent, "cascadeserve-compare-plan-")
	if err != nil {
		return "", err
	}
	w.dirs = append(w.dirs, dir)
	return writePlan(d, w.src, dir)
}

// cleanup removes every folder written.
func (w *planWriter) cleanup() {
	for _, d := range w.dirs {
		os.RemoveAll(d)
	}
}

// switchingPlanFor is the model-switching plan of p: planned from
// cfg.Profile and cfg.Replay (default: the embedded validation replay)
// when ms is nil, else a copy of ms, since it is written with its models.
func switchingPlanFor(ctx context.Context, cfg CompareConfig, p *plan.Plan, ms *plan.Plan, progress func(string, ...any)) (*plan.Plan, error) {
	if ms != nil {
		return clonePlan(ms)
	}
	replay := cfg.Replay
	if replay == nil {
		var err error
		if replay, err = validationReplay(p.Pipeline); err != nil {
			return nil, err
		}
	}
	progress("planning model switching: the plan's settings, one-model cascades...")
	t0 := time.Now()
	ms, err := SwitchingPlan(ctx, p, cfg.Profile, replay)
	if err != nil {
		return nil, err
	}
	progress("  %d one-model gears in %v", len(ms.Gears), time.Since(t0).Round(10*time.Millisecond))
	return ms, nil
}

// switchingGears describes the gears of the model-switching plan.
func switchingGears(ms *plan.Plan) []SwitchingGear {
	var out []SwitchingGear
	for _, g := range ms.Gears {
		out = append(out, SwitchingGear{
			Gear: g.ID, Model: g.Cascade[0].Model, MaxQPS: g.MaxQPS, Accuracy: g.Predicted.Accuracy,
			MaxBatch: stageBatch(g, 0), DelayMs: g.Batching.MaxDelayMs,
		})
	}
	return out
}

// singleSystem is the single-model system: model's gear of the
// model-switching plan ms (written at msFile), with the planner's batching
// for it alone, else a baseline gear added to p with the batching of p's
// most accurate gear, written by plans. It fills in out.Single's gear and
// batching.
func singleSystem(p, ms *plan.Plan, msFile, model string, out *Comparison, plans *planWriter) (compareSystem, error) {
	single := compareSystem{name: SystemSingle, plan: ms, planFile: msFile, planName: "model-switching plan", multiples: true}
	for _, g := range ms.Gears {
		if len(g.Cascade) == 1 && g.Cascade[0].Model == model {
			single.pin, single.start = g.ID, g.MaxQPS
			out.Single.Batching = "the planner's, for " + model + " alone"
			break
		}
	}
	if single.pin == "" {
		d, id, err := withBaselineGear(p, model)
		if err != nil {
			return single, err
		}
		if single.planFile, err = plans.write(d); err != nil {
			return single, err
		}
		single.plan, single.pin, single.planName = d, id, "plan with a baseline gear"
		single.start = d.Gears[d.GearByID(id)].MaxQPS
		out.Single.Batching = "of the plan's most accurate gear " + p.Gears[0].ID
	}
	sg := single.plan.Gears[single.plan.GearByID(single.pin)]
	out.Single.Gear, out.Single.MaxBatch, out.Single.DelayMs = sg.ID, stageBatch(sg, 0), sg.Batching.MaxDelayMs
	return single, nil
}

// isoAccurateMax is the highest max_qps of p's gears predicted at least
// floor accurate (the first gear's when none is).
func isoAccurateMax(p *plan.Plan, floor float64) float64 {
	best := p.Gears[0].MaxQPS
	for _, g := range p.Gears {
		if g.Predicted.Accuracy >= floor {
			best = max(best, g.MaxQPS)
		}
	}
	return best
}

func switchingSummary(gears []SwitchingGear) string {
	parts := make([]string, len(gears))
	for i, g := range gears {
		parts[i] = fmt.Sprintf("%s %s ≤ %.0f/s (%.2f%%, batch %d)", g.Gear, g.Model, g.MaxQPS, 100*g.Accuracy, g.MaxBatch)
	}
	return strings.Join(parts, "; ")
}

// compareSystemConfig is a fresh all-in-one system serving s's plan, its
// gear pinned or the controller free to switch.
func (c CompareConfig) compareSystemConfig(s compareSystem) system.Config {
	l := c.Live
	l.PlanFile = s.planFile
	sc := l.systemConfig(s.pin)
	if s.pin == "" {
		delete(sc.Env, "CASCADE_GEAR")
	}
	return sc
}

// measureSystem searches a system's iso-accuracy capacity, then runs it at
// the multiples of singleQPS (of its own capacity, for the single model).
func measureSystem(ctx context.Context, cfg CompareConfig, s compareSystem, sys *system.System, floor func(LoadRun) float64, singleQPS float64, progress func(string, ...any)) (SystemCapacity, error) {
	out := SystemCapacity{System: s.name, Label: s.label, Plan: s.planName, Pinned: s.pin}
	sp := &systemProbes{cfg: cfg, s: s, sys: sys, floor: floor, slo: s.plan.SLO.P95Ms, progress: progress}
	how := "controller switching"
	if s.pin != "" {
		g := s.plan.Gears[s.plan.GearByID(s.pin)]
		out.Cascade = plan.CascadeString(g.Cascade)
		sp.stages = StageIndex(g)
		how = "gear " + s.pin + " pinned (" + out.Cascade + ")"
	}
	progress("iso-accuracy capacity of %s (%s, %s): Poisson probes from %.0f/s, %v warm-up + %v each, budget %v...",
		s.label, s.planName, how, s.start, cfg.Warmup, cfg.Duration, s.budget)
	if err := sp.searchCapacity(ctx, &out); err != nil {
		return out, err
	}
	ref := singleQPS
	if s.name == SystemSingle {
		ref = out.CapacityQPS
	}
	if !(ref > 0) || !s.multiples {
		return out, nil
	}
	return out, sp.runMultiples(ctx, &out, ref)
}

// systemProbes probes one system of a comparison: Load runs at a load on
// sys, judged against the plan's SLO, the error bound and the accuracy
// floor, each with a seed of its own.
type systemProbes struct {
	cfg      CompareConfig
	s        compareSystem
	sys      *system.System
	floor    func(LoadRun) float64
	slo      float64
	stages   map[string]int
	seed     uint64
	progress func(string, ...any)
}

// searchCapacity searches the system's iso-accuracy capacity with
// SearchKnee and records it, the probes and the probe at the capacity in
// out.
func (sp *systemProbes) searchCapacity(ctx context.Context, out *SystemCapacity) error {
	cfg, s := sp.cfg, sp.s
	probes := map[float64]CompareProbe{}
	res, err := SearchKnee(ctx, KneeSearch{
		Start: s.start, Factor: cfg.Factor, Resolution: cfg.Resolution, Budget: s.budget,
		ProbeTime: cfg.Warmup + cfg.Duration + time.Second,
	}, func(_ context.Context, load float64) (KneeProbe, error) {
		pr, err := sp.run(ctx, load)
		if err != nil {
			return KneeProbe{}, err
		}
		probes[load] = pr
		sp.describe(fmt.Sprintf("probe %d", len(probes)), pr)
		return pr.KneeProbe, nil
	})
	if err != nil {
		return err
	}
	out.CapacityQPS, out.FirstMissQPS, out.Stopped, out.Seconds = res.Knee, res.Miss, res.Stopped, res.Seconds
	for _, kp := range res.Probes {
		pr := probes[kp.Load]
		pr.KneeProbe = kp
		out.Probes = append(out.Probes, pr)
	}
	if k, ok := probes[res.Knee]; ok && res.Knee > 0 {
		out.P95Ms, out.Accuracy, out.Floor, out.ByGear = k.Run.P95Ms, k.Accuracy, k.Floor, k.Run.ByGear
	}
	sp.progress("  %s: iso-accuracy capacity %.0f items/s (first miss %s), stopped: %s, %.0fs",
		s.label, out.CapacityQPS, orDash(out.FirstMissQPS, "%.0f/s"), out.Stopped, out.Seconds)
	return nil
}

// runMultiples runs the system at each multiple of ref, the single
// model's capacity, into out.AtMultiples; with Quick, the single model
// itself runs only at multiples up to 1.
func (sp *systemProbes) runMultiples(ctx context.Context, out *SystemCapacity, ref float64) error {
	for _, m := range sp.cfg.Multiples {
		if sp.s.name == SystemSingle && sp.cfg.Quick && m > 1 {
			continue // above its capacity by definition
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		pr, err := sp.run(ctx, m*ref)
		if err != nil {
			return err
		}
		pr.Multiple = m
		sp.describe(fmt.Sprintf("at %g× the single model's capacity", m), pr)
		out.AtMultiples = append(out.AtMultiples, pr)
	}
	return nil
}

// run probes the system at load items/s: a Poisson Load run, cut short
// when overloaded, judged by probeVerdict and the accuracy floor.
func (sp *systemProbes) run(ctx context.Context, load float64) (CompareProbe, error) {
	cfg, s := sp.cfg, sp.s
	sp.seed++
	// Overloaded: more than a second of the load (at least 20 SLOs)
	// in flight, a quarter second (5 SLOs) with Quick: the mean
	// latency is then far above the SLO.
	limit := load * max(1, 20*sp.slo/1000)
	if cfg.Quick {
		limit = load * max(0.25, 5*sp.slo/1000)
	}
	r, err := Load(ctx, sp.sys.Conn, LoadConfig{
		Pipeline: s.plan.Pipeline, Items: cfg.Items, QPS: load, RequestItems: cfg.RequestItems, UINT8Scale: s.plan.Input.UINT8Scale,
		Warmup: cfg.Warmup, Duration: cfg.Duration, Seed: sp.seed, Stages: sp.stages, Reference: cfg.Reference,
		Abort: abortAbove(limit),
	})
	if err != nil {
		return CompareProbe{}, fmt.Errorf("probe at %.0f/s: %w", load, err)
	}
	pr := CompareProbe{KneeProbe: probeVerdict(r, sp.slo, cfg.MaxErrorRate), Accuracy: r.Accuracy, Run: r}
	pr.Load = load
	if r.Answered > 0 {
		pr.Floor = sp.floor(r)
	}
	if r.Answered > 0 && r.Accuracy < pr.Floor {
		pr.OK = false
		why := fmt.Sprintf("accuracy %.2f%% < floor %.2f%%", 100*r.Accuracy, 100*pr.Floor)
		if pr.Reason != "" {
			why = pr.Reason + ", " + why
		}
		pr.Reason = why
	}
	return pr, nil
}

// describe reports a probe or run as a progress line.
func (sp *systemProbes) describe(what string, pr CompareProbe) {
	state := "pass"
	if !pr.OK {
		state = "MISS: " + pr.Reason
	}
	sp.progress("  %s %s: %.0f items/s offered, %.0f/s served, p95 %.1f ms, accuracy %s (floor %s), gears %s, %s errors, %d lost: %s",
		sp.s.name, what, pr.Load, pr.Run.Throughput, pr.Run.P95Ms, orDash(100*pr.Accuracy, "%.2f%%"), orDash(100*pr.Floor, "%.2f%%"), gearMix(pr.Run.ByGear),
		errorText(pr.Run.Errors), pr.Run.Lost, state)
}

// gearMix is the share of answers per gear, largest first.
func gearMix(by map[string]int) string {
	total := 0
	for _, n := range by {
		total += n
	}
	if total == 0 {
		return "-"
	}
	ids := sortedKeys(by)
	slices.SortStableFunc(ids, func(a, b string) int { return by[b] - by[a] })
	parts := make([]string, 0, len(ids))
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", id, 100*float64(by[id])/float64(total)))
	}
	return strings.Join(parts, " ")
}

func trueShare(v []bool) float64 {
	if len(v) == 0 {
		return 0
	}
	n := 0
	for _, b := range v {
		if b {
			n++
		}
	}
	return float64(n) / float64(len(v))
}
