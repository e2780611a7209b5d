package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/profile"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/simulate"
)

// systemMeasurement configures measureRequestOverhead.
type systemMeasurement struct {
	// Model runs alone in the one gear of the measured system, with the
	// profile it was measured with.
	Model   profile.Model
	Profile plan.Profile
	// QPS are the constant Poisson loads measured one after the other;
	// before each, Warmup runs untimed, then Duration is timed.
	QPS              []float64
	Warmup, Duration time.Duration
	// Fresh starts a new system for every timed run, as `bench
	// --check-plan --knee --knee-fresh-probes` does for every probe: the
	// streams' deduplication windows, which nats-server holds in memory,
	// start empty each time. Without it (the default) one system serves
	// every run, as a deployed system keeps running, and the later loads
	// meet the message ids of the earlier ones.
	Fresh bool
	// Rounds (at least 1) go over QPS one after the other; each load keeps
	// the round with the lower live p95, so a slow spell of the machine
	// spoils one round of a load, not the curve.
	Rounds int
	// FloorQPS, when > 0, is the low load of a last timed run whose
	// latency, less what the simulator predicts for it, is the latency
	// floor (plan.ProfileFile.LatencyFloorMs).
	FloorQPS float64
	// Overheads are the profile's so far: the hop, item and batch overheads
	// the simulator of the floor run charges. The per-request CPU comes from
	// the runs here, and the floor is what the floor run measures.
	Overheads plan.Overheads
	// FitCPU reads the CPU per request as a line fitted over the loads
	// (fitSystemCPU); without it, as the highest measured (worstSystemCPU).
	FitCPU bool
	// Curve: the overheads charged to the floor run's simulation include
	// the loads' cpuCurve, without the loads past MaxP95.
	Curve  bool
	MaxP95 time.Duration
	// Runners and Threads configure the one stage worker; Lib is its ONNX
	// Runtime library (the process's) and WorkerEnv its provider settings.
	Runners, Threads int
	Lib              string
	WorkerEnv        map[string]string
	// Batching of the gear.
	Batching plan.Batching
}

// systemResult is what measureRequestOverhead measured.
type systemResult struct {
	// CPUMsPerRequest is the process's CPU time (user + system, every
	// thread) over the timed run divided by the requests answered in it.
	CPUMsPerRequest float64
	// ModelMsPerRequest is the model's compute per request that is taken
	// out of it (the profile's per-item cost at the gear's max batch).
	ModelMsPerRequest float64
	// RequestOverheadMs = CPUMsPerRequest − ModelMsPerRequest.
	RequestOverheadMs float64
	QPS               float64
	Sent, Answered    int
	P50, P95          time.Duration
	// FloorMs and FloorP95Ms (with systemMeasurement.Curve, for loads
	// within MaxP95) are what the live median and p95 exceeded the
	// simulated ones of the same run by: the latency floor at this load,
	// on plan.CPUPoint.
	FloorMs, FloorP95Ms float64
}

// floorResult is the low-load run that measures the latency floor.
type floorResult struct {
	QPS float64
	// Measured and simulated median and p95 latency of the run, in ms.
	MeasuredP50Ms, MeasuredP95Ms   float64
	SimulatedP50Ms, SimulatedP95Ms float64
	// FloorMs and FloorP95Ms are measured minus simulated (>= 0, the p95
	// at least the median).
	FloorMs, FloorP95Ms float64
}

// errSystemBehind means the measured system did not keep up with the load.
var errSystemBehind = errors.New("the system did not keep up")

// measureRequestOverhead runs the all-in-one system in this process
// (embedded nats-server, controller, ingress, one stage worker) serving one
// gear with the model alone, drives it with Poisson requests of MNIST test
// images from an in-process producer at each of m.QPS, and measures the
// process's CPU time per answered request. What the model's compute does
// not explain is the per-request overhead that ingress, nats-server, the
// producer and the worker's messaging put on the cores the runners share
// (plan.ProfileFile.RequestOverheadMs). With m.FloorQPS it then runs at that
// low load and compares the latency with the simulator's prediction of the
// same run, which charges the overheads measured so far (systemCPU): the
// difference is the latency of the live path that
// the simulator does not model (plan.ProfileFile.LatencyFloorMs).
// The loads go up to saturation: the first (above the lowest) that the
// system falls behind at in the first round ends the list (systemRuns.Behind).
func measureRequestOverhead(ctx context.Context, m systemMeasurement) (systemRuns, error) {
	dir, err := os.MkdirTemp("", "cascadeserve-profile-system-")
	if err != nil {
		return systemRuns{}, err
	}
	defer os.RemoveAll(dir)
	systems := systemSource{ctx: ctx, dir: dir, m: m}
	defer systems.stop()
	var runs systemRuns
	loads := m.QPS
	results := make([]systemResult, len(loads))
	for round := range max(m.Rounds, 1) {
		for k := 0; k < len(loads); k++ {
			ms, err := systems.next()
			if err != nil {
				return systemRuns{}, err
			}
			res, err := ms.measureLoad(loads[k], m)
			switch {
			case err != nil && round > 0 && errors.Is(err, errSystemBehind):
				continue // the earlier round stands
			case err != nil && k > 0 && errors.Is(err, errSystemBehind):
				// Saturated: this load and the higher ones stay out.
				runs.Behind = err
				loads, results = loads[:k], results[:k]
				continue
			case err != nil:
				return systemRuns{}, err
			}
			if round == 0 || res.P95 < results[k].P95 {
				results[k] = res
			}
		}
	}
	runs.Loads = results
	if m.Curve {
		if err := loadFloors(results, m); err != nil {
			return systemRuns{}, err
		}
	}
	if m.FloorQPS <= 0 {
		return runs, nil
	}
	ms, err := systems.next()
	if err != nil {
		return systemRuns{}, err
	}
	if runs.Floor, err = ms.measureFloor(m, results); err != nil {
		return systemRuns{}, err
	}
	return runs, nil
}

// systemRuns is what measureRequestOverhead measured.
type systemRuns struct {
	// Loads are the measured loads, lowest first: the requested ones up to
	// the first the system fell behind at in the first round.
	Loads []systemResult
	// Behind says, when not nil, at which load the system fell behind:
	// it and the loads above it stay out of Loads.
	Behind error
	// Floor is the low-load run of the latency floor.
	Floor floorResult
}

// systemSource hands measureRequestOverhead the system of each timed run:
// with m.Fresh a new one every time; otherwise the same one throughout.
type systemSource struct {
	ctx context.Context
	dir string
	m   systemMeasurement
	cur *measuredSystem
	n   int
}

// next returns the system the next run measures.
func (s *systemSource) next() (*measuredSystem, error) {
	if s.cur != nil && !s.m.Fresh {
		return s.cur, nil
	}
	s.stop()
	s.n++
	ms, err := startMeasuredSystem(s.ctx, filepath.Join(s.dir, strconv.Itoa(s.n)), s.m)
	if err != nil {
		return nil, err
	}
	ms.seed = uint64(s.n) << 32 // every run its own requests, as on one system
	s.cur = ms
	return ms, nil
}

// stop stops the current system and removes its store.
func (s *systemSource) stop() {
	if s.cur == nil {
		return
	}
	s.cur.sys.Stop()
	_ = os.RemoveAll(filepath.Join(s.dir, strconv.Itoa(s.n)))
	s.cur = nil
	// Every system shares this process: collect the stopped one's heap
	// (nats-server's message ids and caches) now, or the collector charges
	// it to the next system's timed run.
	debug.FreeOSMemory()
}

// measuredSystem is the all-in-one system measureRequestOverhead drives and
// the load generator's settings for it.
type measuredSystem struct {
	ctx    context.Context
	sys    *system.System
	images *dataset.Set
	seed   uint64
}

// startMeasuredSystem starts the all-in-one system serving m's model alone
// from a plan written into dir, with its store there too.
func startMeasuredSystem(ctx context.Context, dir string, m systemMeasurement) (*measuredSystem, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	planFile, err := writeMeasurementPlan(dir, m)
	if err != nil {
		return nil, err
	}
	images, err := mnist.TestImages()
	if err != nil {
		return nil, err
	}
	sys, err := system.Start(ctx, system.Config{
		DataDir:     filepath.Join(dir, "nats"),
		NATSPort:    -1,
		MonitorPort: 0,
		PlanFile:    planFile,
		Workers:     1,
		Env:         systemEnv(m),
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, fmt.Errorf("start system: %w", err)
	}
	return &measuredSystem{ctx: ctx, sys: sys, images: images}, nil
}

// run offers constant Poisson load of qps requests/s for d, as bench sends
// them (8-bit pixels when the plan takes them), with a new seed each run.
func (ms *measuredSystem) run(qps float64, d time.Duration) (loadgen.Report, error) {
	ms.seed++
	return loadgen.Run(ms.ctx, ms.sys.Conn, loadgen.Config{
		Pipeline: ms.sys.Plan.Pipeline, Items: ms.images, Schedule: loadgen.Constant(qps),
		Duration: d, Timeout: 2 * time.Second, Seed: ms.seed, Client: "profile",
		UINT8Scale: ms.sys.Plan.Input.UINT8Scale,
	})
}

// timedRun warms the system up at qps for m.Warmup, then runs it for
// m.Duration, and fails with errSystemBehind when fewer than 99% of the
// requests were answered.
func (ms *measuredSystem) timedRun(qps float64, m systemMeasurement, measure func() error) (loadgen.Report, error) {
	if _, err := ms.run(qps, m.Warmup); err != nil {
		return loadgen.Report{}, fmt.Errorf("warm-up at %v requests/s: %w", qps, err)
	}
	if err := measure(); err != nil {
		return loadgen.Report{}, err
	}
	rep, err := ms.run(qps, m.Duration)
	if err != nil {
		return rep, fmt.Errorf("load at %v requests/s: %w", qps, err)
	}
	if err := measure(); err != nil {
		return rep, err
	}
	if rep.Answered == 0 || float64(rep.Answered) < 0.99*float64(rep.Sent) {
		return rep, fmt.Errorf("%w at %v requests/s: %d of %d answered (p95 %v); measure at a lower load",
			errSystemBehind, qps, rep.Answered, rep.Sent, rep.Percentile(0.95))
	}
	return rep, nil
}

// measureLoad runs the system at qps and reads the process's CPU time per
// answered request, less the model's compute.
func (ms *measuredSystem) measureLoad(qps float64, m systemMeasurement) (systemResult, error) {
	var cpu []time.Duration
	rep, err := ms.timedRun(qps, m, func() error {
		t, err := processCPU()
		cpu = append(cpu, t)
		return err
	})
	if err != nil {
		return systemResult{}, err
	}
	res := systemResult{QPS: qps, Sent: rep.Sent, Answered: rep.Answered, P50: rep.Percentile(0.5), P95: rep.Percentile(0.95)}
	res.CPUMsPerRequest = float64(cpu[1]-cpu[0]) / float64(time.Millisecond) / float64(rep.Answered)
	res.ModelMsPerRequest = m.Profile.ItemCostMs(m.Batching.MaxBatch)
	res.RequestOverheadMs = max(res.CPUMsPerRequest-res.ModelMsPerRequest, 0)
	return res, nil
}

// measureFloor runs the system at m.FloorQPS and compares its latency with
// the simulator's prediction of the same run, charged the overheads the
// loads measured (systemCPU, and the curve with m.Curve): what the live path
// adds beyond it is the latency floor.
func (ms *measuredSystem) measureFloor(m systemMeasurement, results []systemResult) (floorResult, error) {
	rep, err := ms.timedRun(m.FloorQPS, m, func() error { return nil })
	if err != nil {
		return floorResult{}, err
	}
	sim, err := simulateSystemRun(m, results, m.FloorQPS, rep.Answered)
	if err != nil {
		return floorResult{}, fmt.Errorf("simulate the floor run: %w", err)
	}
	p50, p95 := rep.Percentile(0.5), rep.Percentile(0.95)
	fl := floorResult{
		QPS:           m.FloorQPS,
		MeasuredP50Ms: millis(p50), MeasuredP95Ms: millis(p95),
		SimulatedP50Ms: sim.P50Ms, SimulatedP95Ms: sim.P95Ms,
	}
	fl.FloorMs, fl.FloorP95Ms = floorOver(p50, p95, sim)
	return fl, nil
}

// simulateSystemRun simulates the measured system's run at qps, answered
// requests of it, charged the overheads the loads measured (systemCPU, and
// the curve with m.Curve) but no latency floor: what the live run exceeds
// it by is the floor.
func simulateSystemRun(m systemMeasurement, results []systemResult, qps float64, answered int) (simulate.Result, error) {
	o := m.Overheads
	o.RequestOverheadMs, o.IdleCPUMsPerS = systemCPU(results, m.FitCPU)
	if m.Curve {
		o.CPULoad = cpuCurve(results, m.MaxP95)
		for k := range o.CPULoad {
			o.CPULoad[k].FloorMs, o.CPULoad[k].FloorP95Ms = 0, 0
		}
	}
	o.LatencyFloorMs, o.LatencyFloorP95Ms = 0, 0
	return simulate.Run(simulate.Config{
		QPS:       qps,
		Requests:  min(max(answered, 2000), 200000),
		Seed:      1,
		Overheads: o,
		// One worker hosts the model on every runner, as in the run.
		SharedRunners: true,
		Stages: []simulate.Stage{{
			Model: m.Model.Name, Profile: m.Profile, Runners: m.Runners,
			MaxBatch: m.Batching.MaxBatch, MaxDelayMs: m.Batching.MaxDelayMs,
		}},
		AnsweredBy: []float64{1},
	})
}

// loadFloors sets the latency floor of every load within m.MaxP95: its
// live median and p95 less the simulated ones of the same run.
func loadFloors(results []systemResult, m systemMeasurement) error {
	for k, r := range results {
		if pastSaturation(r, m.MaxP95) {
			continue
		}
		sim, err := simulateSystemRun(m, results, r.QPS, r.Answered)
		if err != nil {
			return fmt.Errorf("simulate the run at %v requests/s: %w", r.QPS, err)
		}
		results[k].FloorMs, results[k].FloorP95Ms = floorOver(r.P50, r.P95, sim)
	}
	return nil
}

// floorOver is the latency floor of a live run with median p50 and 95th
// percentile p95 over its simulation sim, in ms: the live less the
// simulated, at least 0, the p95 at least the median.
func floorOver(p50, p95 time.Duration, sim simulate.Result) (median, p95Ms float64) {
	median = max(millis(p50)-sim.P50Ms, 0)
	return median, max(millis(p95)-sim.P95Ms, median)
}

// millis is d in milliseconds.
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuCurve is the overhead's CPU time per second at each measured load, in
// increasing load order (plan.Overheads.CPULoad), leaving out the loads
// past saturation (pastSaturation with maxP95); nil with fewer than two
// loads left.
func cpuCurve(results []systemResult, maxP95 time.Duration) []plan.CPUPoint {
	var pts []plan.CPUPoint
	for _, r := range results {
		if !pastSaturation(r, maxP95) {
			pts = append(pts, plan.CPUPoint{QPS: r.QPS, CPUMsPerS: roundSig4(r.QPS * r.RequestOverheadMs), FloorMs: roundSig4(r.FloorMs), FloorP95Ms: roundSig4(r.FloorP95Ms)})
		}
	}
	if len(pts) < 2 {
		return nil
	}
	slices.SortFunc(pts, func(a, b plan.CPUPoint) int { return cmp.Compare(a.QPS, b.QPS) })
	// Equal loads keep the first.
	return slices.CompactFunc(pts, func(a, b plan.CPUPoint) bool { return a.QPS == b.QPS })
}

// pastSaturation reports whether the load's live p95 exceeded maxP95 (0:
// never): the system no longer kept up, the cores capped its CPU time, and
// the CPU per request it shows is the cores' limit, not the load's cost.
func pastSaturation(r systemResult, maxP95 time.Duration) bool {
	return maxP95 > 0 && r.P95 > maxP95
}

// systemCPU reads the request overhead and idle CPU from the results:
// fitted (fitSystemCPU) or the highest per request (idle 0).
func systemCPU(results []systemResult, fit bool) (perRequestMs, idleMsPerS float64) {
	if fit {
		return fitSystemCPU(results)
	}
	worst := 0.0
	for _, r := range results {
		worst = max(worst, r.RequestOverheadMs)
	}
	return worst, 0
}

// fitSystemCPU fits the line CPU(q) = idle + q × perRequest (ms of CPU per
// second at q requests/s, the model's compute taken out) to the results by
// least squares. With one load, or where the fit is not a line of positive
// slope and intercept, it returns idle 0 and the highest overhead per
// request measured: the conservative reading.
func fitSystemCPU(results []systemResult) (perRequestMs, idleMsPerS float64) {
	worst := 0.0
	for _, r := range results {
		worst = max(worst, r.RequestOverheadMs)
	}
	if len(results) < 2 {
		return worst, 0
	}
	var sq, sr, sqq, sqr float64
	for _, r := range results {
		rate := r.QPS * r.RequestOverheadMs
		sq += r.QPS
		sr += rate
		sqq += r.QPS * r.QPS
		sqr += r.QPS * rate
	}
	n := float64(len(results))
	den := n*sqq - sq*sq
	if den <= 0 {
		return worst, 0
	}
	slope := (n*sqr - sq*sr) / den
	icept := (sr - slope*sq) / n
	if !(slope > 0) || !(icept >= 0) {
		return worst, 0
	}
	return slope, icept
}

// writeMeasurementPlan writes the model and a plan with one gear that runs
// it alone on every runner.
func writeMeasurementPlan(dir string, m systemMeasurement) (string, error) {
	file := m.Model.Name + ".onnx"
	if err := os.WriteFile(filepath.Join(dir, file), m.Model.ONNX, 0o644); err != nil {
		return "", err
	}
	p := &plan.Plan{
		Version:     plan.FormatVersion,
		Pipeline:    "mnist",
		Description: "one-gear plan of `cascadeserve profile --system-qps`",
		SLO:         plan.SLO{P95Ms: 1000},
		Capacity:    m.Runners,
		Confidence:  plan.MetricMargin,
		Input:       plan.Input{Name: "input", Datatype: "FP32", Shape: mnist.ItemShape(), Classes: mnist.Classes, UINT8Scale: 1.0 / 255},
		Models:      []plan.Model{{Name: m.Model.Name, File: file, Profile: m.Profile}},
		Ladder:      []string{m.Model.Name},
		Gears: []plan.Gear{{
			ID:        "measure",
			MaxQPS:    slices.Max(append([]float64{m.FloorQPS}, m.QPS...)),
			Cascade:   []plan.Stage{{Model: m.Model.Name}},
			Batching:  m.Batching,
			Runners:   map[string]float64{m.Model.Name: 1},
			Predicted: plan.Prediction{Accuracy: 1, P95Ms: 1, CostMsPerItem: m.Profile.ItemCostMs(m.Batching.MaxBatch), Reach: []float64{1}},
		}},
		Hysteresis: plan.DefaultHysteresis(),
	}
	if err := p.Validate(); err != nil {
		return "", fmt.Errorf("measurement plan: %w", err)
	}
	b, err := p.Marshal()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// systemEnv is the settings of the measured system's services.
func systemEnv(m systemMeasurement) map[string]string {
	env := maps.Clone(m.WorkerEnv)
	if env == nil {
		env = map[string]string{}
	}
	env["CASCADE_WORKER_RUNNERS"] = strconv.Itoa(m.Runners)
	env["CASCADE_WORKER_THREADS"] = strconv.Itoa(m.Threads)
	if m.Lib != "" {
		env["CASCADE_ONNXRUNTIME_LIB"] = m.Lib
	}
	return env
}
