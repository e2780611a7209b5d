package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"
)

// ProfileFormatVersion is the version of the profile file format.
const ProfileFormatVersion = 1

// ErrBadProfile marks a profile file that cannot be read or is inconsistent.
var ErrBadProfile = errors.New("bad profile")

// ProfileFile is what `cascadeserve profile` measures on the target hardware
// and `cascadeserve plan` reads: every model's latency per batch size with
// the configured intra-op threads, and the cost of one hop through NATS.
type ProfileFile struct {
	// Version is ProfileFormatVersion.
	Version int `json:"version"`
	// Threads is the intra-op thread count every model was measured with.
	Threads int `json:"threads"`
	// HopOverheadMs is the median time of one hop through the NATS path
	// (publish with PubAck, fetch, ack) in ms. The simulator adds it to every
	// hop an item makes: ingress → first model, model → model, model → result.
	HopOverheadMs float64 `json:"hop_overhead_ms"`
	// ItemOverheadMs is the runner time per item spent on messaging
	// (decode, publish with PubAck, ack) at batch throughput, in ms; the
	// simulator adds it per item to every batch's service time.
	ItemOverheadMs float64 `json:"item_overhead_ms,omitempty"`
	// BatchOverheadMs is the runner time per batch spent on messaging
	// whatever the batch's size (the fetch's round trip to the server, the
	// wait for the batch's PubAcks), in ms; the simulator adds it to every
	// batch's service time, so small batches at high load cost what they
	// cost the workers.
	BatchOverheadMs float64 `json:"batch_overhead_ms,omitempty"`
	// RequestOverheadMs is the CPU time per request spent outside the
	// runners but on the runners' cores, in ms: ingress, nats-server and a
	// producer that share the machine with the workers (the all-in-one
	// `cascadeserve up`). The simulator and the planner slow the runners
	// down by the share of the cores it takes (see SimConfig). It is 0 when
	// those processes run on other machines.
	RequestOverheadMs float64 `json:"request_overhead_ms,omitempty"`
	// IdleCPUMsPerS is the CPU time per second, in ms, that the same
	// processes spend whatever the load: with RequestOverheadMs, the line
	// CPU(q) = IdleCPUMsPerS + q × RequestOverheadMs fitted to the system's
	// CPU time at several loads (`profile --system-qps a,b`). 0 when one
	// load was measured (RequestOverheadMs then carries all of it).
	IdleCPUMsPerS float64 `json:"idle_cpu_ms_per_s,omitempty"`
	// LatencyFloorMs and LatencyFloorP95Ms are the median and 95th
	// percentile of the per-request latency of the live path that the
	// simulator does not explain, in ms: the measured latency of the
	// all-in-one system at low load minus the simulated latency of the same
	// configuration (`profile --system-qps`). The simulator adds a draw of
	// it to every request (see SimConfig.LatencyFloorMs).
	LatencyFloorMs    float64 `json:"latency_floor_ms,omitempty"`
	LatencyFloorP95Ms float64 `json:"latency_floor_p95_ms,omitempty"`
	// Host describes the machine (free text: CPU model, cores, OS).
	Host string `json:"host,omitempty"`
	// Runtime describes the inference runtime (e.g. "onnxruntime 1.30.0").
	Runtime string `json:"runtime,omitempty"`
	// MeasuredAt is when the profile was taken.
	MeasuredAt time.Time `json:"measured_at,omitzero"`
	// Repetitions is how many timed runs each point is the median of.
	Repetitions int `json:"repetitions,omitempty"`
	// Models maps a model name to its latency profile.
	Models map[string]Profile `json:"models"`
}

// Validate reports every problem of the profile, joined, wrapped in
// ErrBadProfile.
func (f *ProfileFile) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if f.Version != ProfileFormatVersion {
		bad("version is %d, this build reads version %d", f.Version, ProfileFormatVersion)
	}
	if f.Threads < 0 {
		bad("threads must be >= 0, got %d", f.Threads)
	}
	if f.HopOverheadMs < 0 || math.IsNaN(f.HopOverheadMs) || math.IsInf(f.HopOverheadMs, 0) {
		bad("hop_overhead_ms must be a finite number >= 0, got %v", f.HopOverheadMs)
	}
	if f.ItemOverheadMs < 0 || math.IsNaN(f.ItemOverheadMs) || math.IsInf(f.ItemOverheadMs, 0) {
		bad("item_overhead_ms must be a finite number >= 0, got %v", f.ItemOverheadMs)
	}
	if f.BatchOverheadMs < 0 || math.IsNaN(f.BatchOverheadMs) || math.IsInf(f.BatchOverheadMs, 0) {
		bad("batch_overhead_ms must be a finite number >= 0, got %v", f.BatchOverheadMs)
	}
	if f.RequestOverheadMs < 0 || math.IsNaN(f.RequestOverheadMs) || math.IsInf(f.RequestOverheadMs, 0) {
		bad("request_overhead_ms must be a finite number >= 0, got %v", f.RequestOverheadMs)
	}
	if f.IdleCPUMsPerS < 0 || math.IsNaN(f.IdleCPUMsPerS) || math.IsInf(f.IdleCPUMsPerS, 0) {
		bad("idle_cpu_ms_per_s must be a finite number >= 0, got %v", f.IdleCPUMsPerS)
	}
	if err := validFloor(f.LatencyFloorMs, f.LatencyFloorP95Ms); err != nil {
		bad("%v", err)
	}
	if len(f.Models) == 0 {
		bad("no models")
	}
	names := make([]string, 0, len(f.Models))
	for name := range f.Models {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := f.Models[name].validate(); err != nil {
			bad("model %q: %w", name, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrBadProfile, err)
	}
	return nil
}

// validate checks that a profile has points with ascending batch sizes and
// positive finite latencies.
func (p Profile) validate() error {
	if len(p.Points) == 0 {
		return errors.New("no profile points")
	}
	for j, pt := range p.Points {
		if pt.Batch < 1 || !(pt.LatencyMs > 0) || math.IsInf(pt.LatencyMs, 0) {
			return fmt.Errorf("point %d: batch %d latency %vms (need batch >= 1, finite latency > 0)", j, pt.Batch, pt.LatencyMs)
		}
		if j > 0 && pt.Batch <= p.Points[j-1].Batch {
			return errors.New("points must have strictly ascending batch sizes")
		}
	}
	return nil
}

// ItemCostMs returns the compute one item costs when it runs in a batch of b:
// LatencyMs(b)/b, in runner-milliseconds.
func (p Profile) ItemCostMs(b int) float64 {
	if b < 1 {
		b = 1
	}
	return p.LatencyMs(b) / float64(b)
}

// MaxBatch returns the largest measured batch size (0 without points).
func (p Profile) MaxBatch() int {
	if len(p.Points) == 0 {
		return 0
	}
	return p.Points[len(p.Points)-1].Batch
}

// ParseProfileFile decodes and validates a profile file. Unknown fields are
// errors.
func ParseProfileFile(b []byte) (*ProfileFile, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f ProfileFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: decode json: %w", ErrBadProfile, err)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// LoadProfileFile reads and validates a profile file.
func LoadProfileFile(path string) (*ProfileFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load profile: %w", err)
	}
	f, err := ParseProfileFile(b)
	if err != nil {
		return nil, fmt.Errorf("load profile %s: %w", path, err)
	}
	return f, nil
}

// Marshal validates the profile and encodes it as indented JSON.
func (f *ProfileFile) Marshal() ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Save validates the profile and writes it to path as indented JSON.
func (f *ProfileFile) Save(path string) error {
	b, err := f.Marshal()
	if err != nil {
		return fmt.Errorf("save profile %s: %w", path, err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	return nil
}
