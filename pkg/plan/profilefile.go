package plan

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
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
	// Provider is the execution provider every model was measured on
	// ("cpu" or "cuda"; empty in profiles made before it was recorded).
	Provider string `json:"provider,omitempty"`
	// ProviderOptions are the CUDA provider's options the models were
	// measured with, by their ONNX Runtime names (use_tf32, ...), plus
	// pin_host_buffers when the host buffers were page-locked. Empty for
	// the CPU provider. For humans: the worker's CASCADE_WORKER_CUDA_*
	// settings should match them.
	ProviderOptions map[string]string `json:"provider_options,omitempty"`
	// Overheads are the costs of the live path outside the models: the
	// NATS hop, messaging per item and per batch, and, with
	// `profile --system-qps`, the co-located processes' CPU and the latency
	// floor.
	Overheads
	// Host describes the machine (free text: CPU model, cores, OS).
	Host string `json:"host,omitempty"`
	// Runtime describes the inference runtime (e.g. "onnxruntime 1.30.0").
	Runtime string `json:"runtime,omitempty"`
	// MeasuredAt is when the profile was taken.
	MeasuredAt time.Time `json:"measured_at,omitzero"`
	// Repetitions is how many timed runs each point was measured with (in
	// rounds: the point is the lowest of the rounds' medians).
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
	if f.Provider != "" && !wire.ValidName(f.Provider) {
		bad("provider %q must be a provider name such as cpu or cuda", f.Provider)
	}
	errs = append(errs, f.Overheads.Validate())
	if len(f.Models) == 0 {
		bad("no models")
	}
	names := make([]string, 0, len(f.Models))
	for name := range f.Models {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := f.Models[name].Validate(); err != nil {
			bad("model %q: %w", name, err)
		}
		if p := f.Models[name].Provider; p != "" && f.Provider != "" && p != f.Provider {
			bad("model %q: provider %q differs from the profile's %q", name, p, f.Provider)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrBadProfile, err)
	}
	return nil
}

// Validate checks that a profile has points with ascending batch sizes and
// positive finite latencies.
func (p Profile) Validate() error {
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
	var f ProfileFile
	if err := decodeStrict(b, &f); err != nil {
		return nil, fmt.Errorf("%w: decode json: %w", ErrBadProfile, err)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// LoadProfileFile reads and validates a profile file.
func LoadProfileFile(path string) (*ProfileFile, error) {
	return loadFile("profile", path, ParseProfileFile)
}

// Marshal validates the profile and encodes it as indented JSON.
func (f *ProfileFile) Marshal() ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return marshalIndent(f)
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
