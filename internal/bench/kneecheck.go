package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// KneeConfig configures CheckKnees. Zero values take the defaults in the
// comments.
type KneeConfig struct {
	// Live is the plan checked and the systems serving it; Live.Items are
	// the requests, cycled.
	Live
	// Gears are the ids of the gears measured (default: every gear of the
	// plan).
	Gears []string
	// RequestItems > 1 sends that many items per request (the producer's
	// batch axis); loads stay in items/s.
	RequestItems int
	// Start is the first load probed, items/s (default: the gear's
	// max_qps in the plan).
	Start float64
	// Probing is each probe's length and the search's bounds (Warmup 2s,
	// Duration 5s, Budget 90s per gear, Factor 1.5, Resolution 0.05,
	// MaxErrorRate 0.001 by default).
	Probing
	// Tolerance is the largest acceptable |measured / planned − 1| (default
	// 0.15).
	Tolerance float64
	// FreshProbes gives every probe a fresh system, as `profile
	// --system-qps --system-fresh` measures each load: no probe inherits
	// what an overloaded one before it left behind (backlog, and the
	// message ids of the streams' deduplication windows, which nats-server
	// holds in memory for CASCADE_DEDUPE_WINDOW). By default a gear's
	// probes run one after the other on one fresh system.
	FreshProbes bool
}

func (c *KneeConfig) defaults() error {
	c.Probing.defaults(Probing{Warmup: 2 * time.Second, Duration: 5 * time.Second, Budget: 90 * time.Second, Factor: 1.5, Resolution: 0.05})
	orDefault(&c.Tolerance, 0.15)
	if c.RequestItems < 1 {
		c.RequestItems = 1
	}
	return c.Live.defaults()
}

// KneeCheck is the planned against the measured capacity of gears.
type KneeCheck struct {
	Environment Environment  `json:"environment"`
	Settings    KneeSettings `json:"settings"`
	Gears       []GearKnee   `json:"gears"`
}

// KneeSettings are the search's settings.
type KneeSettings struct {
	SLOP95Ms        float64 `json:"slo_p95_ms"`
	MaxErrorRate    float64 `json:"max_error_rate"`
	WarmupSeconds   float64 `json:"warmup_seconds"`
	DurationSeconds float64 `json:"duration_seconds"`
	BudgetSeconds   float64 `json:"budget_seconds"`
	Factor          float64 `json:"factor"`
	Resolution      float64 `json:"resolution"`
	Tolerance       float64 `json:"tolerance"`
	FreshProbes     bool    `json:"fresh_probes,omitempty"`
	RequestItems    int     `json:"request_items"`
	UINT8           bool    `json:"uint8_inputs"`
}

// Verdicts of a gear's capacity.
const (
	KneePass       = "PASS"       // measured knee within the tolerance of the plan
	KneeMiss       = "MISS"       // outside it
	KneeUnresolved = "UNRESOLVED" // the search's bracket straddles a bound of the tolerance
)

// GearKnee is one gear's planned and measured capacity.
type GearKnee struct {
	Gear    string `json:"gear"`
	Cascade string `json:"cascade"`
	// PlannedQPS is the gear's max_qps; KneeQPS the highest load (items/s)
	// served within the SLO (0: none of the probes), FirstMissQPS the
	// lowest load above it that was not (0: none, KneeQPS is a lower
	// bound); Ratio is KneeQPS / PlannedQPS.
	PlannedQPS   float64 `json:"planned_max_qps"`
	KneeQPS      float64 `json:"knee_qps"`
	FirstMissQPS float64 `json:"first_miss_qps,omitempty"`
	Ratio        float64 `json:"ratio"`
	// P95Ms, ServedQPS and Accuracy are the probe at the knee's.
	P95Ms             float64 `json:"p95_ms"`
	ServedQPS         float64 `json:"served_qps"`
	Accuracy          float64 `json:"accuracy"`
	PredictedAccuracy float64 `json:"predicted_accuracy"`
	// Verdict is KneePass, KneeMiss or KneeUnresolved; Stopped why the
	// search ended; Seconds its length.
	Verdict string    `json:"verdict"`
	Stopped string    `json:"stopped"`
	Seconds float64   `json:"seconds"`
	Probes  []KneeRun `json:"probes"`
	// Systems is how many systems the probes ran on: one in all, or one
	// per probe run with KneeConfig.FreshProbes.
	Systems int `json:"systems"`
}

// KneeRun is one probe: its verdict and the run.
type KneeRun struct {
	KneeProbe
	Run LoadRun `json:"run"`
}

// Pass reports whether every gear's capacity met the target.
func (k *KneeCheck) Pass() bool {
	for _, g := range k.Gears {
		if g.Verdict != KneePass {
			return false
		}
	}
	return len(k.Gears) > 0
}

// kneeVerdict judges a search's result against planned × (1 ± tol). The
// knee lies in [Knee, Miss) (Miss 0: unbounded): a resolved search is
// judged on its Knee, an unresolved one passes or misses only when the
// whole bracket does.
func kneeVerdict(r KneeResult, planned, tol float64) string {
	lo, hi := planned*(1-tol), planned*(1+tol)
	switch {
	case r.Knee > hi || r.Miss > 0 && r.Miss <= lo:
		return KneeMiss
	case r.Knee == 0:
		return KneeUnresolved
	case r.Resolved():
		if r.Knee >= lo {
			return KneePass
		}
		return KneeMiss
	case r.Knee >= lo && r.Miss > 0 && r.Miss <= hi:
		return KneePass
	}
	return KneeUnresolved
}

// CheckKnees measures each gear's capacity: on a fresh all-in-one system
// per gear with the gear pinned, SearchKnee finds the highest open-loop
// Poisson load (items/s) at which the live p95 stays within the plan's SLO,
// nothing is lost and at most MaxErrorRate of the items get typed errors,
// starting from the gear's max_qps and able to go above it. Each probe is a
// Load run on the same system; one that overloads the pipeline (a second
// of its load in flight) is cut short. Misses are reported, not returned as
// errors.
func CheckKnees(ctx context.Context, cfg KneeConfig) (*KneeCheck, error) {
	p, err := configured(cfg.defaults, &cfg.Live)
	if err != nil {
		return nil, err
	}
	var gears []int
	if len(cfg.Gears) == 0 {
		for i := range p.Gears {
			gears = append(gears, i)
		}
	} else if gears, err = pickGears(p, cfg.Gears); err != nil {
		return nil, err
	}
	out := &KneeCheck{
		Environment: cfg.environmentOf(p),
		Settings: KneeSettings{
			SLOP95Ms: p.SLO.P95Ms, MaxErrorRate: cfg.MaxErrorRate, WarmupSeconds: cfg.Warmup.Seconds(),
			DurationSeconds: cfg.Duration.Seconds(), BudgetSeconds: cfg.Budget.Seconds(), Factor: cfg.Factor,
			Resolution: cfg.Resolution, Tolerance: cfg.Tolerance, FreshProbes: cfg.FreshProbes,
			RequestItems: cfg.RequestItems, UINT8: p.Input.UINT8Scale > 0,
		},
	}
	progress := cfg.progressf
	sc := cfg.Live
	for _, gi := range gears {
		g := p.Gears[gi]
		search := func(on probeSystems) (GearKnee, error) { return gearKnee(ctx, cfg, p, g, on, progress) }
		var gk GearKnee
		systems := 0
		if !cfg.FreshProbes {
			gk, err = withSystem(ctx, cfg.TempDir, sc.systemConfig(g.ID), func(sys *system.System) (GearKnee, error) {
				systems++
				return search(func(f func(*system.System) (LoadRun, error)) (LoadRun, error) { return f(sys) })
			})
		} else {
			gk, err = search(func(f func(*system.System) (LoadRun, error)) (LoadRun, error) {
				systems++
				return withSystem(ctx, cfg.TempDir, sc.systemConfig(g.ID), f)
			})
		}
		gk.Systems = systems
		if err != nil {
			return nil, fmt.Errorf("capacity of gear %s: %w", g.ID, err)
		}
		out.Gears = append(out.Gears, gk)
	}
	return out, nil
}

// probeStartTime is what a probe takes besides its load, for the search's
// budget: a second, and two more to start a fresh system.
func probeStartTime(fresh bool) time.Duration {
	if fresh {
		return 3 * time.Second
	}
	return time.Second
}

// probeSystems runs a probe on a system serving the gear: a fresh one, or
// the one every probe of the gear shares (without KneeConfig.FreshProbes).
type probeSystems func(probe func(*system.System) (LoadRun, error)) (LoadRun, error)

// gearKnee searches one gear's knee on the systems serving it.
func gearKnee(ctx context.Context, cfg KneeConfig, p *plan.Plan, g plan.Gear, on probeSystems, progress func(string, ...any)) (GearKnee, error) {
	out := GearKnee{Gear: g.ID, Cascade: plan.CascadeString(g.Cascade), PlannedQPS: g.MaxQPS, PredictedAccuracy: g.Predicted.Accuracy}
	start := cfg.Start
	if !(start > 0) {
		start = g.MaxQPS
	}
	slo := p.SLO.P95Ms
	stages := StageIndex(g)
	progress("capacity of gear %s (%s), planned %.0f items/s: Poisson probes from %.0f/s, %v warm-up + %v each, budget %v...",
		g.ID, out.Cascade, g.MaxQPS, start, cfg.Warmup, cfg.Duration, cfg.Budget)
	runs := map[float64]LoadRun{}
	probe := func(ctx context.Context, load float64) (KneeProbe, error) {
		// Overloaded: more than a second of the load (at least 20 SLOs) in
		// flight; the p95 is lost, and waiting longer only grows the
		// backlog the next probe would inherit.
		limit := load * max(1, 20*slo/1000)
		var pr KneeProbe
		for try := 0; try <= cfg.Retries; try++ {
			run, err := on(func(sys *system.System) (LoadRun, error) {
				return Load(ctx, sys.Conn, LoadConfig{
					Pipeline: p.Pipeline, Items: cfg.Items, QPS: load, RequestItems: cfg.RequestItems, UINT8Scale: p.Input.UINT8Scale,
					Warmup: cfg.Warmup, Duration: cfg.Duration, Seed: uint64(len(runs) + 1 + try), Stages: stages,
					Abort: abortAbove(limit),
				})
			})
			if err != nil {
				return KneeProbe{}, fmt.Errorf("probe at %.0f/s: %w", load, err)
			}
			runs[load] = run
			pr = probeVerdict(run, slo, cfg.MaxErrorRate)
			state := "within SLO"
			if !pr.OK {
				state = "MISS: " + pr.Reason
			}
			again := ""
			if try > 0 {
				again = " (again)"
			}
			progress("  gear %s probe %d%s: %.0f items/s offered, %.0f/s served, p95 %.1f ms, %s errors, %d lost: %s",
				g.ID, len(runs), again, load, run.Throughput, run.P95Ms, errorText(run.Errors), run.Lost, state)
			if pr.OK || run.Aborted {
				break
			}
		}
		return pr, nil
	}
	res, err := SearchKnee(ctx, KneeSearch{
		Start: start, Factor: cfg.Factor, Resolution: cfg.Resolution, Budget: cfg.Budget,
		ProbeTime: cfg.Warmup + cfg.Duration + probeStartTime(cfg.FreshProbes),
	}, probe)
	if err != nil {
		return out, err
	}
	out.KneeQPS, out.FirstMissQPS, out.Stopped, out.Seconds = res.Knee, res.Miss, res.Stopped, res.Seconds
	if out.PlannedQPS > 0 {
		out.Ratio = out.KneeQPS / out.PlannedQPS
	}
	if k, ok := runs[res.Knee]; ok && res.Knee > 0 {
		out.P95Ms, out.ServedQPS, out.Accuracy = k.P95Ms, k.Throughput, k.Accuracy
	}
	for _, pr := range res.Probes {
		out.Probes = append(out.Probes, KneeRun{KneeProbe: pr, Run: runs[pr.Load]})
	}
	out.Verdict = kneeVerdict(res, out.PlannedQPS, cfg.Tolerance)
	progress("  gear %s: knee %.0f items/s (%.2f× planned %.0f), stopped: %s, %.0fs: %s",
		g.ID, out.KneeQPS, out.Ratio, out.PlannedQPS, out.Stopped, out.Seconds, out.Verdict)
	return out, nil
}

// capacityText is a searched capacity for a table, "≥ " before it when
// no load above it missed (it is then a lower bound).
func capacityText(capacity, firstMiss float64) string {
	s := fmt.Sprintf("%.0f", capacity)
	if firstMiss == 0 && capacity > 0 {
		s = "≥ " + s
	}
	return s
}

// abortAbove is a LoadConfig.Abort that stops a phase once more than limit
// items are in flight: the pipeline is overloaded.
func abortAbove(limit float64) func(loadgen.Snapshot) bool {
	return func(s loadgen.Snapshot) bool { return float64(s.Sent-s.Answered-s.Errors) > limit }
}

// probeVerdict: a probe passes when it was not cut short, nothing was
// lost, at most maxErr of its items got typed errors, something was
// answered and the p95 is within the SLO.
func probeVerdict(run LoadRun, sloMs, maxErr float64) KneeProbe {
	pr := KneeProbe{P95Ms: run.P95Ms}
	var why []string
	if run.Aborted {
		why = append(why, "overloaded, cut short")
	}
	if run.Lost > 0 {
		why = append(why, fmt.Sprintf("%d lost", run.Lost))
	}
	if n := run.ErrorCount(); n > 0 && float64(n) > maxErr*float64(max(run.Sent, 1)) {
		why = append(why, fmt.Sprintf("errors %.2f%% > %.2f%%", 100*float64(n)/float64(max(run.Sent, 1)), 100*maxErr))
	}
	if run.Answered == 0 && !run.Aborted {
		why = append(why, "nothing answered")
	}
	if run.P95Ms > sloMs {
		why = append(why, fmt.Sprintf("p95 %.1f ms > %.0f ms", run.P95Ms, sloMs))
	}
	pr.OK = len(why) == 0
	pr.Reason = strings.Join(why, ", ")
	return pr
}

// WriteTable prints each gear's planned and measured capacity.
func (k *KneeCheck) WriteTable(w io.Writer) error {
	return writeReport(w, k.Environment, k.writeBody)
}

// writeBody writes the search's settings, each gear's capacity and probes,
// and the verdict.
func (k *KneeCheck) writeBody(b *strings.Builder) {
	s := k.Settings
	input := "FP32"
	if s.UINT8 {
		input = "UINT8"
	}
	fmt.Fprintf(b, "\nCapacity: highest open-loop Poisson load (items/s) with live p95 ≤ %.0f ms, nothing lost, typed errors ≤ %.1f%%;\n",
		s.SLOP95Ms, 100*s.MaxErrorRate)
	where := "one fresh system per gear, its probes one after the other"
	if s.FreshProbes {
		where = "every probe on a fresh system"
	}
	fmt.Fprintf(b, "gear pinned, %s; probes of %.0fs warm-up + %.0fs, ×%.2g steps then bisection to %.0f%%, ≤ %.0fs per gear; %d %s item(s) per request\n",
		where, s.WarmupSeconds, s.DurationSeconds, s.Factor, 100*s.Resolution, s.BudgetSeconds, s.RequestItems, input)
	tw := newTable(b)
	fmt.Fprintln(tw, "GEAR\tCASCADE\tPLANNED MAX_QPS\tMEASURED KNEE\tMEASURED/PLANNED\tFIRST MISS\tP95 MS AT KNEE\tACCURACY\tPREDICTED\tPROBES\tSECONDS\tSTOPPED\tVERDICT")
	for _, g := range k.Gears {
		knee := capacityText(g.KneeQPS, g.FirstMissQPS)
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%.2f\t%s\t%s\t%s\t%.2f%%\t%d\t%.0f\t%s\t%s (±%.0f%%)\n", g.Gear, g.Cascade, g.PlannedQPS, knee, g.Ratio,
			orDash(g.FirstMissQPS, "%.0f"), orDash(g.P95Ms, "%.1f"), orDash(100*g.Accuracy, "%.2f%%"), 100*g.PredictedAccuracy,
			len(g.Probes), g.Seconds, g.Stopped, g.Verdict, 100*s.Tolerance)
	}
	tw.Flush()
	fmt.Fprintln(b, "\nProbes, in order (items/s offered: verdict)")
	for _, g := range k.Gears {
		parts := make([]string, len(g.Probes))
		for i, p := range g.Probes {
			parts[i] = fmt.Sprintf("%.0f: ok, p95 %.1f ms", p.Load, p.P95Ms)
			if !p.OK {
				parts[i] = fmt.Sprintf("%.0f: %s", p.Load, p.Reason)
			}
		}
		fmt.Fprintf(b, "%s: %s\n", g.Gear, strings.Join(parts, "; "))
	}
	writeVerdict(b, k.Pass(), "every gear's capacity within the target", "some gears' capacity off the target")
}
