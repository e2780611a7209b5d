package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// FormatVersion is the version of the plan file format this build reads and
// writes. A file with another version is rejected with a clear error.
const FormatVersion = 1

// ErrInvalidPlan marks a plan that fails validation. Load wraps it together
// with every problem found, so a user sees all mistakes in one run.
var ErrInvalidPlan = errors.New("invalid plan")

// Plan is the gear plan: everything the online system needs to serve one
// pipeline. The planner writes it; the controller serves it; workers read
// thresholds, batching and runner shares of the current gear from it.
type Plan struct {
	// Version is FormatVersion.
	Version int `json:"version"`
	// Pipeline names the pipeline; it appears in every subject and stream
	// name, so it is lower-case letters, digits and '-' or '_'.
	Pipeline string `json:"pipeline"`
	// Description is free text for humans.
	Description string `json:"description,omitempty"`
	// SLO is the latency objective the gears were planned for.
	SLO SLO `json:"slo"`
	// Capacity is the number of runners (CPU inference slots or GPUs) the
	// plan was made for.
	Capacity int `json:"capacity"`
	// Partitions is how many partitions each model's work queue has (a
	// stream and subject per partition; 0 or 1: one). Producers of
	// envelopes spread them over the partitions, workers consume all of
	// them. The controller may override it for a deployment.
	Partitions int `json:"partitions,omitempty"`
	// RunnerPool says how the capacity's runners are deployed, for the
	// simulator: "shared" (the default when empty) — every stage worker
	// hosts every model of the plan and its runners serve whichever model
	// has the most queued items per runner share, as `cascadeserve up`
	// runs it — or "per-model": workers deployed per model, each model's
	// share of the runners serving it alone.
	RunnerPool string `json:"runner_pool,omitempty"`
	// Confidence names the confidence metric: "margin" (top-2 margin, the
	// default), "max_prob" or "entropy".
	Confidence string `json:"confidence"`
	// Input describes one item of the pipeline's input; every model of the
	// ladder takes the same input.
	Input Input `json:"input"`
	// Overheads are the live path's measured costs, copied from the
	// profile the plan was made from; the simulator charges them.
	Overheads
	// Models lists every model a gear may use, with its profile.
	Models []Model `json:"models"`
	// Ladder orders the models from cheapest to most accurate.
	Ladder []string `json:"ladder"`
	// Gears are ordered by MaxQPS ascending: the first is the most accurate,
	// for the lowest load; the last is the cheapest and also serves any load
	// above its MaxQPS.
	Gears []Gear `json:"gears"`
	// Hysteresis tunes how the controller moves between gears.
	Hysteresis Hysteresis `json:"hysteresis"`
	// Planner records how the plan was made (free-form, for humans).
	Planner map[string]any `json:"planner,omitempty"`

	// models resolves Model.File; set by Load/LoadFile/SetModelSource.
	models fs.FS
}

// Runner pools (Plan.RunnerPool).
const (
	RunnerPoolShared   = "shared"
	RunnerPoolPerModel = "per-model"
)

// RunnerPools lists the valid Plan.RunnerPool values.
func RunnerPools() []string { return []string{RunnerPoolShared, RunnerPoolPerModel} }

// SharedRunners reports whether the plan's runners serve every model
// (RunnerPool "shared" or empty).
func (p *Plan) SharedRunners() bool { return p.RunnerPool != RunnerPoolPerModel }

// SLO is a latency objective.
type SLO struct {
	// P95Ms is the 95th-percentile end-to-end latency objective in ms.
	P95Ms float64 `json:"p95_ms"`
}

// Input describes one item of a pipeline's input tensor (without the batch
// axis). It is what ingress validates requests against.
type Input struct {
	// Name is the tensor name in Open Inference Protocol requests.
	Name string `json:"name"`
	// Datatype is the pipeline's value type, "FP32": items are FP32
	// values, or UINT8 bytes standing for byte × UINT8Scale. Each model
	// gets them in its own input type (float32 or uint8; see
	// internal/modelinput).
	Datatype string `json:"datatype"`
	// Shape is the item shape, e.g. [1, 28, 28].
	Shape []int64 `json:"shape"`
	// Classes is the number of output classes.
	Classes int `json:"classes"`
	// UINT8Scale is what a UINT8 byte stands for: byte × UINT8Scale (1/255
	// for images whose values are in [0,1]). A model with float32 input
	// gets byte × UINT8Scale; a model with uint8 input gets the bytes, and
	// FP32 items divided by UINT8Scale when they are bytes times it. The
	// planner takes it from the replay, which models were measured with.
	// 0 means UINT8 is not accepted (and uint8-input models cannot serve).
	UINT8Scale float64 `json:"uint8_scale,omitempty"`
}

// Elements returns the number of scalars in one item.
func (in Input) Elements() int {
	n := int64(1)
	for _, d := range in.Shape {
		n *= d
	}
	return int(n)
}

// Model is one model of the ladder.
type Model struct {
	// Name identifies the model in gears, subjects and metrics.
	Name string `json:"name"`
	// File is the ONNX file, relative to the plan file's folder.
	File string `json:"file"`
	// Temperature, when not 0 or 1, calibrates the model's probabilities by
	// temperature scaling before confidence is computed (see Calibrate).
	Temperature float64 `json:"temperature,omitempty"`
	// Profile is the model's measured latency per batch size.
	Profile Profile `json:"profile"`
	// Accuracy is the model's accuracy alone on the validation replay.
	Accuracy float64 `json:"accuracy,omitempty"`
}

// Profile is a model's latency per batch size on the target hardware.
type Profile struct {
	// Threads is the intra-op thread count the profile was measured with.
	Threads int `json:"threads,omitempty"`
	// Provider is the ONNX Runtime execution provider the profile was
	// measured on ("cpu" or "cuda"; empty: not recorded, as in plans made
	// before it was). A stage worker refuses to serve a model profiled for
	// another provider than its own (CASCADE_WORKER_PROVIDER) unless told
	// otherwise: the plan's latencies, and so its gears' capacities, would
	// not hold.
	Provider string `json:"provider,omitempty"`
	// Points are (batch size, median latency) pairs, batch ascending.
	Points []ProfilePoint `json:"points"`
}

// ProfilePoint is one measured batch size.
type ProfilePoint struct {
	Batch     int     `json:"batch"`
	LatencyMs float64 `json:"latency_ms"`
}

// LatencyMs returns the predicted latency of one run at batch size b, linearly
// interpolated between measured points and extrapolated from the last two.
func (p Profile) LatencyMs(b int) float64 {
	pts := p.Points
	switch {
	case len(pts) == 0 || b <= 0:
		return 0
	case len(pts) == 1:
		return pts[0].LatencyMs * float64(b) / float64(pts[0].Batch)
	}
	i := sort.Search(len(pts), func(i int) bool { return pts[i].Batch >= b })
	if i < len(pts) && pts[i].Batch == b {
		return pts[i].LatencyMs
	}
	if i == 0 {
		// Below the smallest measured batch: scale down, never below zero.
		return pts[0].LatencyMs * float64(b) / float64(pts[0].Batch)
	}
	if i == len(pts) {
		i = len(pts) - 1
	}
	a, c := pts[i-1], pts[i]
	slope := (c.LatencyMs - a.LatencyMs) / float64(c.Batch-a.Batch)
	return max(a.LatencyMs+slope*float64(b-a.Batch), 0)
}

// Gear is one operating point: a cascade with its thresholds, the batching
// settings, and how runners are shared among models.
type Gear struct {
	// ID names the gear in logs, metrics and the KV `gear` key.
	ID string `json:"id"`
	// MaxQPS is the highest intake rate (requests/s) this gear serves within
	// the SLO on the plan's capacity.
	MaxQPS float64 `json:"max_qps"`
	// Cascade lists the stages in order. An item is answered by the first
	// stage whose confidence reaches its threshold; the last stage always
	// answers (its threshold is ignored and written as 0).
	Cascade []Stage `json:"cascade"`
	// Batching is how workers pull batches in this gear.
	Batching Batching `json:"batching"`
	// Runners maps a model to its share of the plan's capacity (0..1); the
	// shares of one gear sum to at most 1.
	Runners map[string]float64 `json:"runners"`
	// Predicted is what the planner expects of this gear.
	Predicted Prediction `json:"predicted"`
}

// Stage is one step of a cascade.
type Stage struct {
	Model string `json:"model"`
	// Threshold is the confidence at or above which this stage answers.
	Threshold float64 `json:"threshold"`
	// MaxBatch, when set, overrides the gear's max batch for this stage.
	MaxBatch int `json:"max_batch,omitempty"`
}

// CascadeString writes a cascade compactly, e.g. "mlp@0.91>cnn".
func CascadeString(stages []Stage) string {
	var b strings.Builder
	for j, s := range stages {
		if j > 0 {
			b.WriteByte('>')
		}
		b.WriteString(s.Model)
		if j < len(stages)-1 {
			fmt.Fprintf(&b, "@%.4g", s.Threshold)
		}
	}
	return b.String()
}

// Batching are the settings of a worker's pull: at most MaxBatch items,
// waiting at most MaxDelayMs for the batch to fill.
type Batching struct {
	MaxBatch   int     `json:"max_batch"`
	MaxDelayMs float64 `json:"max_delay_ms"`
}

// MaxDelay returns MaxDelayMs as a duration.
func (b Batching) MaxDelay() time.Duration { return msDuration(b.MaxDelayMs) }

// Prediction is the planner's expectation for a gear, from the validation
// replay and the simulator.
type Prediction struct {
	// Accuracy is the gear's accuracy on the planner's holdout replay when
	// it had one (Planner["accuracy_from"] says so), else on the
	// validation replay it chose the thresholds on.
	Accuracy float64 `json:"accuracy"`
	// ValidationAccuracy is the accuracy on the validation replay when
	// Accuracy is the holdout's (0 otherwise).
	ValidationAccuracy float64 `json:"validation_accuracy,omitempty"`
	P95Ms              float64 `json:"p95_ms"`
	// CostMsPerItem is the expected compute per request, summed over the
	// stages it reaches, in runner-milliseconds.
	CostMsPerItem float64 `json:"cost_ms_per_item"`
	// Reach is the fraction of requests that reach each stage.
	Reach []float64 `json:"reach,omitempty"`
}

// AccuracyFromHoldout is the value of the planner metadata key
// "accuracy_from" when the gears' predicted accuracy is a holdout's.
const AccuracyFromHoldout = "holdout replay"

// HoldoutAccuracy reports whether the gears' predicted accuracy was
// measured on a holdout replay (Prediction.ValidationAccuracy is then the
// validation replay's).
func (p *Plan) HoldoutAccuracy() bool { return p.Planner["accuracy_from"] == AccuracyFromHoldout }

// PlannedAccuracy is the accuracy the planner chose the gear on: the
// validation accuracy when Accuracy is a holdout's, else Accuracy. Gears
// are ordered by it; on a holdout two neighbours may swap by a few
// hundredths of a point.
func (p Prediction) PlannedAccuracy() float64 {
	if p.ValidationAccuracy > 0 {
		return p.ValidationAccuracy
	}
	return p.Accuracy
}

// Hysteresis tunes the controller's gear choice. Moving to a cheaper gear
// happens at once when load rises; moving back to a more accurate gear waits
// until load is below DownshiftFactor of that gear's MaxQPS, the backlog has
// drained, and the current gear has been held for MinDwellMs.
type Hysteresis struct {
	// DownshiftFactor is the fraction (0..1] of a more accurate gear's MaxQPS
	// that load must be under before the controller moves back to it.
	DownshiftFactor float64 `json:"downshift_factor"`
	// DrainedBacklogSeconds: the backlog (queued items over all models) must
	// be at most this many seconds of the target gear's MaxQPS.
	DrainedBacklogSeconds float64 `json:"drained_backlog_seconds"`
	// MinDwellMs is the least time spent in a gear before moving to a more
	// accurate one.
	MinDwellMs float64 `json:"min_dwell_ms"`
	// SampleIntervalMs is how often the controller measures load (200–500).
	SampleIntervalMs float64 `json:"sample_interval_ms"`
	// RateWindowMs is the window over which the intake rate is averaged.
	RateWindowMs float64 `json:"rate_window_ms"`
	// DownshiftHoldMs: the controller moves to a more accurate gear only
	// on the highest intake rate it measured over this long, so a dip of
	// the measured rate shorter than it, as when an overloaded ingress or
	// producer falls behind for a moment, does not take it down into a gear
	// that the real load overruns. Moves up still follow the current rate.
	// 0 (the value in a plan file without it): the current rate.
	DownshiftHoldMs float64 `json:"downshift_hold_ms,omitempty"`
	// UpshiftWindowMs: the controller also moves up on the intake rate of
	// this short window, when it is above the rate window's, so the first
	// part of a burst is not averaged away by the longer window. Moves down
	// never use it. 0 (the default, and the value in a plan file without
	// it): the rate window alone. On the 2-core box a 250 ms window moved
	// up about 0.5 s sooner in the bursty trace but missed no fewer
	// seconds (docs/benchmarks.md), so the plans leave it off.
	UpshiftWindowMs float64 `json:"upshift_window_ms,omitempty"`
	// UpshiftFactor is the share (DownshiftFactor, 1] of a gear's MaxQPS
	// above which the controller moves up, to the gear whose MaxQPS ×
	// UpshiftFactor holds the load: a margin for the plan's error, since a
	// gear's MaxQPS is the highest load its p95 meets the SLO at, and a
	// gear run at it sits on the SLO. 0 (the value in a plan file without
	// it): 1, no margin.
	UpshiftFactor float64 `json:"upshift_factor,omitempty"`
}

// UpshiftShare returns UpshiftFactor, or 1 when it is 0.
func (h Hysteresis) UpshiftShare() float64 {
	if h.UpshiftFactor == 0 {
		return 1
	}
	return h.UpshiftFactor
}

// MinDwell returns MinDwellMs as a duration.
func (h Hysteresis) MinDwell() time.Duration { return msDuration(h.MinDwellMs) }

// SampleInterval returns SampleIntervalMs as a duration.
func (h Hysteresis) SampleInterval() time.Duration { return msDuration(h.SampleIntervalMs) }

// UpshiftWindow returns UpshiftWindowMs as a duration.
func (h Hysteresis) UpshiftWindow() time.Duration { return msDuration(h.UpshiftWindowMs) }

// DownshiftHold returns DownshiftHoldMs as a duration.
func (h Hysteresis) DownshiftHold() time.Duration { return msDuration(h.DownshiftHoldMs) }

// RateWindow returns RateWindowMs as a duration.
func (h Hysteresis) RateWindow() time.Duration { return msDuration(h.RateWindowMs) }

// msDuration converts milliseconds, as plan files give them, to a duration.
func msDuration(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

// DefaultHysteresis returns the settings used when a plan leaves them zero.
func DefaultHysteresis() Hysteresis {
	return Hysteresis{DownshiftFactor: 0.8, DrainedBacklogSeconds: 0.05, MinDwellMs: 1000, SampleIntervalMs: 250, RateWindowMs: 1000, DownshiftHoldMs: 3000, UpshiftFactor: 0.9}
}

// Model returns the named model.
func (p *Plan) Model(name string) (Model, bool) {
	for _, m := range p.Models {
		if m.Name == name {
			return m, true
		}
	}
	return Model{}, false
}

// GearByID returns the index of the gear with the given id, or -1.
func (p *Plan) GearByID(id string) int {
	for i, g := range p.Gears {
		if g.ID == id {
			return i
		}
	}
	return -1
}

// GearFor returns the index of the most accurate gear that covers qps: the
// first gear whose MaxQPS is at least qps, or the last gear.
func (p *Plan) GearFor(qps float64) int {
	for i, g := range p.Gears {
		if qps <= g.MaxQPS {
			return i
		}
	}
	return len(p.Gears) - 1
}

// UsedModels returns every model some gear uses, in ladder order. This is
// the placement: workers load all of them at start so a gear switch never
// loads anything.
func (p *Plan) UsedModels() []string {
	used := map[string]bool{}
	for _, g := range p.Gears {
		for _, s := range g.Cascade {
			used[s.Model] = true
		}
	}
	var out []string
	for _, m := range p.Ladder {
		if used[m] {
			out = append(out, m)
		}
	}
	return out
}

// StageOf returns the index of model's stage in gear g, and whether g uses
// the model at all.
func (g Gear) StageOf(model string) (index int, ok bool) {
	for i, s := range g.Cascade {
		if s.Model == model {
			return i, true
		}
	}
	return -1, false
}

// QueuePartitions is the number of partitions of every model's queue (at
// least 1).
func (p *Plan) QueuePartitions() int { return max(p.Partitions, 1) }

// MaxBatch is model's max batch in gear g: its stage's override, else the
// gear's (at least 1).
func (g Gear) MaxBatch(model string) int {
	if i, ok := g.StageOf(model); ok && g.Cascade[i].MaxBatch > 0 {
		return g.Cascade[i].MaxBatch
	}
	return max(g.Batching.MaxBatch, 1)
}

// RunnerCount returns how many runners of the plan's capacity a model gets
// in the gear: its share × capacity, rounded, at least 1 for a model of the
// cascade and 0 for any other.
func (g Gear) RunnerCount(model string, capacity int) int {
	if _, ok := g.StageOf(model); !ok {
		return 0
	}
	return max(1, int(math.Round(g.Runners[model]*float64(capacity))))
}

// MaxPartitions bounds Plan.Partitions.
const MaxPartitions = 64

// SetModelSource sets where Model.File paths are resolved.
func (p *Plan) SetModelSource(fsys fs.FS) { p.models = fsys }

// ReadModel returns the ONNX bytes of the named model, resolving its File
// against the folder the plan was loaded from.
func (p *Plan) ReadModel(name string) ([]byte, error) {
	m, ok := p.Model(name)
	if !ok {
		return nil, fmt.Errorf("model %q is not in plan %q", name, p.Pipeline)
	}
	if p.models == nil {
		return nil, fmt.Errorf("read model %q: plan has no model source (load it with LoadFile or call SetModelSource)", name)
	}
	b, err := fs.ReadFile(p.models, path.Clean(filepath.ToSlash(m.File)))
	if err != nil {
		return nil, fmt.Errorf("read model %q: %w", name, err)
	}
	return b, nil
}

// LoadFile reads and validates a plan file; model files are resolved
// relative to the file's folder.
func LoadFile(file string) (*Plan, error) {
	p, err := loadFile("plan", file, Parse)
	if err != nil {
		return nil, err
	}
	p.models = os.DirFS(filepath.Dir(file))
	return p, nil
}

// Load reads and validates the plan file name in fsys; model files are
// resolved relative to its folder in fsys.
func Load(fsys fs.FS, name string) (*Plan, error) {
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		return nil, fmt.Errorf("load plan: %w", err)
	}
	p, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("load plan %s: %w", name, err)
	}
	if dir := path.Dir(name); dir != "." {
		sub, err := fs.Sub(fsys, dir)
		if err != nil {
			return nil, fmt.Errorf("load plan %s: %w", name, err)
		}
		fsys = sub
	}
	p.models = fsys
	return p, nil
}

// Parse decodes and validates a plan. Unknown fields are errors, so a typo
// in a hand-written plan is caught instead of silently ignored. Zero
// hysteresis settings get their defaults.
func Parse(b []byte) (*Plan, error) {
	var p Plan
	if err := decodeStrict(b, &p); err != nil {
		return nil, fmt.Errorf("%w: decode json: %w", ErrInvalidPlan, err)
	}
	p.applyDefaults()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Marshal encodes the plan as indented JSON.
func (p *Plan) Marshal() ([]byte, error) { return marshalIndent(p) }

// loadFile reads file and parses it with parse, the errors saying what it
// holds.
func loadFile[T any](what, file string, parse func([]byte) (T, error)) (T, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("load %s: %w", what, err)
	}
	v, err := parse(b)
	if err != nil {
		return v, fmt.Errorf("load %s %s: %w", what, file, err)
	}
	return v, nil
}

// decodeStrict decodes the JSON in b into v. Unknown fields are errors, so
// a typo in a hand-written file is caught instead of silently ignored.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// marshalIndent encodes v as indented JSON ending in a newline.
func marshalIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func (p *Plan) applyDefaults() {
	d := DefaultHysteresis()
	h := &p.Hysteresis
	if *h == (Hysteresis{}) {
		*h = d // no hysteresis at all: every default, the hold too
	}
	if h.DownshiftFactor == 0 {
		h.DownshiftFactor = d.DownshiftFactor
	}
	if h.DrainedBacklogSeconds == 0 {
		h.DrainedBacklogSeconds = d.DrainedBacklogSeconds
	}
	if h.MinDwellMs == 0 {
		h.MinDwellMs = d.MinDwellMs
	}
	if h.SampleIntervalMs == 0 {
		h.SampleIntervalMs = d.SampleIntervalMs
	}
	if h.RateWindowMs == 0 {
		h.RateWindowMs = d.RateWindowMs
	}
	if p.Confidence == "" {
		p.Confidence = MetricMargin
	}
	if p.Input.Datatype == "" {
		p.Input.Datatype = "FP32"
	}
}

// Validate reports every problem of the plan, joined, wrapped in
// ErrInvalidPlan.
func (p *Plan) Validate() error {
	var ps problems
	p.checkSettings(&ps)
	p.Input.check(&ps)
	ps = append(ps, p.Overheads.Validate())
	models := p.checkModels(&ps)
	inLadder := p.checkLadder(&ps, models)
	p.checkGears(&ps, inLadder)
	p.Hysteresis.check(&ps)
	if err := errors.Join(ps...); err != nil {
		return fmt.Errorf("%w:\n%w", ErrInvalidPlan, err)
	}
	return nil
}

// problems collects what validation finds, in order; nil entries are
// skipped when they are joined.
type problems []error

func (ps *problems) add(format string, args ...any) {
	*ps = append(*ps, fmt.Errorf(format, args...))
}

// checkSettings checks the plan's scalar settings.
func (p *Plan) checkSettings(ps *problems) {
	if p.Version != FormatVersion {
		ps.add("version is %d, this build reads version %d", p.Version, FormatVersion)
	}
	if !wire.ValidName(p.Pipeline) {
		ps.add("pipeline %q must be 1-32 characters of a-z, 0-9, '-' or '_'", p.Pipeline)
	}
	if !(p.SLO.P95Ms > 0) {
		ps.add("slo.p95_ms must be > 0, got %v", p.SLO.P95Ms)
	}
	if p.Partitions < 0 || p.Partitions > MaxPartitions {
		ps.add("partitions must be in [0,%d], got %d", MaxPartitions, p.Partitions)
	}
	if p.Capacity < 1 {
		ps.add("capacity must be >= 1 runner, got %d", p.Capacity)
	}
	if p.RunnerPool != "" && !slices.Contains(RunnerPools(), p.RunnerPool) {
		ps.add("runner_pool %q is not one of %v", p.RunnerPool, RunnerPools())
	}
	if !slices.Contains(Metrics(), p.Confidence) {
		ps.add("confidence %q is not one of %v", p.Confidence, Metrics())
	}
}

func (in Input) check(ps *problems) {
	if in.Datatype != "FP32" {
		ps.add("input.datatype %q: only FP32 model inputs are supported", in.Datatype)
	}
	if len(in.Shape) == 0 {
		ps.add("input.shape is empty")
	}
	for _, d := range in.Shape {
		if d < 1 {
			ps.add("input.shape %v has a dimension < 1", in.Shape)
			break
		}
	}
	if in.Classes < 2 {
		ps.add("input.classes must be >= 2, got %d", in.Classes)
	}
	if in.UINT8Scale < 0 {
		ps.add("input.uint8_scale must be >= 0")
	}
}

// checkModels checks every model and returns the set of their names.
func (p *Plan) checkModels(ps *problems) map[string]bool {
	models := map[string]bool{}
	for i, m := range p.Models {
		if !wire.ValidName(m.Name) || strings.Contains(m.Name, "__") {
			ps.add("models[%d].name %q must be 1-32 characters of a-z, 0-9, '-' or '_', without \"__\" (it separates a queue's partitions)", i, m.Name)
		}
		if models[m.Name] {
			ps.add("model %q is listed twice", m.Name)
		}
		models[m.Name] = true
		if m.File == "" {
			ps.add("model %q has no file", m.Name)
		}
		if m.Temperature < 0 || math.IsNaN(m.Temperature) {
			ps.add("model %q: temperature must be >= 0", m.Name)
		}
		m.Profile.check(ps, m.Name)
	}
	if len(p.Models) == 0 {
		ps.add("no models")
	}
	return models
}

// check checks the profile of the named model as a plan holds it.
func (prof Profile) check(ps *problems, model string) {
	if len(prof.Points) == 0 {
		ps.add("model %q has no profile points", model)
	}
	if prof.Provider != "" && !wire.ValidName(prof.Provider) {
		ps.add("model %q: profile provider %q must be a provider name such as cpu or cuda", model, prof.Provider)
	}
	for j, pt := range prof.Points {
		if pt.Batch < 1 || !(pt.LatencyMs > 0) {
			ps.add("model %q profile point %d: batch %d latency %vms (need batch >= 1, latency > 0)", model, j, pt.Batch, pt.LatencyMs)
		}
		if j > 0 && pt.Batch <= prof.Points[j-1].Batch {
			ps.add("model %q profile points must have strictly ascending batch sizes", model)
		}
	}
}

// checkLadder checks the ladder against the models and returns the set of
// its names.
func (p *Plan) checkLadder(ps *problems, models map[string]bool) map[string]bool {
	if len(p.Ladder) == 0 {
		ps.add("ladder is empty")
	}
	inLadder := map[string]bool{}
	for _, name := range p.Ladder {
		if !models[name] {
			ps.add("ladder names unknown model %q", name)
		}
		if inLadder[name] {
			ps.add("ladder lists %q twice", name)
		}
		inLadder[name] = true
	}
	return inLadder
}

// checkGears checks the gears: ids, load order, cascades, batching and
// runner shares.
func (p *Plan) checkGears(ps *problems, inLadder map[string]bool) {
	if len(p.Gears) == 0 {
		ps.add("no gears")
	}
	ids := map[string]bool{}
	for i, g := range p.Gears {
		where := fmt.Sprintf("gear %d (%q)", i, g.ID)
		if !wire.ValidName(g.ID) {
			ps.add("%s: id must be 1-32 characters of a-z, 0-9, '-' or '_'", where)
		}
		if ids[g.ID] {
			ps.add("%s: duplicate id", where)
		}
		ids[g.ID] = true
		if !(g.MaxQPS > 0) {
			ps.add("%s: max_qps must be > 0", where)
		}
		if i > 0 && g.MaxQPS <= p.Gears[i-1].MaxQPS {
			ps.add("%s: gears must be ordered by strictly ascending max_qps", where)
		}
		seen := p.checkCascade(ps, where, g.Cascade, inLadder)
		g.Batching.check(ps, where)
		checkRunners(ps, where, g.Runners, seen)
	}
}

// checkCascade checks a gear's cascade and returns the set of its models.
func (p *Plan) checkCascade(ps *problems, where string, cascade []Stage, inLadder map[string]bool) map[string]bool {
	if len(cascade) == 0 {
		ps.add("%s: empty cascade", where)
	}
	seen := map[string]bool{}
	lastPos := -1
	for j, s := range cascade {
		if !inLadder[s.Model] {
			ps.add("%s stage %d: model %q is not in the ladder", where, j, s.Model)
		}
		if seen[s.Model] {
			ps.add("%s: model %q appears twice in the cascade", where, s.Model)
		}
		seen[s.Model] = true
		if pos := slices.Index(p.Ladder, s.Model); pos >= 0 {
			if pos < lastPos {
				ps.add("%s: cascade must follow ladder order (cheap to accurate)", where)
			}
			lastPos = pos
		}
		last := j == len(cascade)-1
		if !last && (s.Threshold < 0 || s.Threshold > 1 || math.IsNaN(s.Threshold)) {
			ps.add("%s stage %d: threshold %v outside [0,1]", where, j, s.Threshold)
		}
		if last && s.Threshold != 0 {
			ps.add("%s: the last stage always answers; its threshold must be 0, got %v", where, s.Threshold)
		}
		if s.MaxBatch < 0 {
			ps.add("%s stage %d: max_batch must be >= 0", where, j)
		}
	}
	return seen
}

func (b Batching) check(ps *problems, where string) {
	if b.MaxBatch < 1 || b.MaxBatch > 4096 {
		ps.add("%s: batching.max_batch must be in [1,4096], got %d", where, b.MaxBatch)
	}
	if b.MaxDelayMs < 0 || b.MaxDelayMs > 60000 {
		ps.add("%s: batching.max_delay_ms must be in [0,60000], got %v", where, b.MaxDelayMs)
	}
}

// checkRunners checks a gear's runner shares against its cascade's models.
func checkRunners(ps *problems, where string, runners map[string]float64, cascade map[string]bool) {
	sum := 0.0
	for m, share := range runners {
		if !cascade[m] {
			ps.add("%s: runner share for %q, which is not in its cascade", where, m)
		}
		if !(share > 0) || share > 1 {
			ps.add("%s: runner share of %q must be in (0,1], got %v", where, m, share)
		}
		sum += share
	}
	if sum > 1+1e-9 {
		ps.add("%s: runner shares sum to %.3f > 1", where, sum)
	}
}

func (h Hysteresis) check(ps *problems) {
	if !(h.DownshiftFactor > 0 && h.DownshiftFactor <= 1) {
		ps.add("hysteresis.downshift_factor must be in (0,1], got %v", h.DownshiftFactor)
	}
	if h.DrainedBacklogSeconds < 0 {
		ps.add("hysteresis.drained_backlog_seconds must be >= 0")
	}
	if h.MinDwellMs < 0 {
		ps.add("hysteresis.min_dwell_ms must be >= 0")
	}
	if h.SampleIntervalMs < 50 || h.SampleIntervalMs > 5000 {
		ps.add("hysteresis.sample_interval_ms must be in [50,5000], got %v", h.SampleIntervalMs)
	}
	if h.RateWindowMs < h.SampleIntervalMs {
		ps.add("hysteresis.rate_window_ms must be >= sample_interval_ms")
	}
	if h.DownshiftHoldMs < 0 || h.DownshiftHoldMs > 60000 {
		ps.add("hysteresis.downshift_hold_ms must be in [0,60000], got %v", h.DownshiftHoldMs)
	}
	if h.UpshiftFactor != 0 && !(h.UpshiftFactor > h.DownshiftFactor && h.UpshiftFactor <= 1) {
		ps.add("hysteresis.upshift_factor must be 0 (none) or in (downshift_factor %v, 1], got %v", h.DownshiftFactor, h.UpshiftFactor)
	}
	if h.UpshiftWindowMs < 0 || h.UpshiftWindowMs > h.RateWindowMs {
		ps.add("hysteresis.upshift_window_ms must be in [0, rate_window_ms %v], got %v", h.RateWindowMs, h.UpshiftWindowMs)
	}
}
