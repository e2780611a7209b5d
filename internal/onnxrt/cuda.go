package onnxrt

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// cuDNN convolution algorithm searches (CUDAOptions.ConvAlgoSearch).
const (
	// ConvAlgoExhaustive benchmarks every algorithm on the first run of each
	// input shape and keeps the fastest (ONNX Runtime's default): the best
	// steady state, a slow first batch of each size.
	ConvAlgoExhaustive = "EXHAUSTIVE"
	// ConvAlgoHeuristic takes cuDNN's heuristic choice without benchmarking.
	ConvAlgoHeuristic = "HEURISTIC"
	// ConvAlgoDefault takes cuDNN's default algorithm.
	ConvAlgoDefault = "DEFAULT"
)

// CUDAOptions configures the CUDA execution provider (SessionOptions.CUDA).
// The zero value is ONNX Runtime's defaults on GPU 0. The options are passed
// to the provider as its string options (ProviderOptions); a nil *bool keeps
// ONNX Runtime's default.
type CUDAOptions struct {
	// DeviceID is the CUDA device ordinal (device_id), as CUDA numbers the
	// visible devices (CUDA_VISIBLE_DEVICES renumbers them).
	DeviceID int
	// ConvAlgoSearch is how cuDNN picks convolution algorithms
	// (cudnn_conv_algo_search): ConvAlgoExhaustive, ConvAlgoHeuristic or
	// ConvAlgoDefault; empty keeps ONNX Runtime's default (EXHAUSTIVE).
	ConvAlgoSearch string
	// TF32 lets float32 matrix multiplications and convolutions run on
	// TF32 tensor cores (use_tf32; Ampere and newer GPUs): much faster, with
	// a 10-bit mantissa in the products. nil keeps the default (on in ONNX
	// Runtime 1.29).
	TF32 *bool
	// MaxWorkspace lets cuDNN's algorithm search use as much GPU memory as
	// it needs (cudnn_conv_use_max_workspace); off limits it to 32 MB and
	// may pick slower algorithms. nil keeps the default (on).
	MaxWorkspace *bool
	// MemLimit caps, in bytes, the provider's GPU memory arena
	// (gpu_mem_limit); 0 means no limit.
	MemLimit int64
	// PreferNHWC lets the provider run convolutions in NHWC layout
	// (prefer_nhwc), which tensor cores favour; the model is rewritten with
	// layout transposes at load. nil keeps the default (off).
	PreferNHWC *bool
	// PinHostBuffers allocates the session's input and output buffers
	// outside the Go heap and page-locks them with cudaHostRegister, so the
	// copy of each batch to the GPU is a direct DMA instead of a staged
	// copy through a driver buffer. It loads libcudart.so.13 (the CUDA
	// runtime the provider uses) when the session opens; Open fails with
	// ErrProviderUnavailable if it cannot.
	PinHostBuffers bool
	// Extra holds further provider options by their ONNX Runtime names
	// (for example "arena_extend_strategy": "kSameAsRequested"), passed as
	// given. A key of a field above is refused, and so are
	// enable_cuda_graph and the stream options (see ProviderOptions).
	Extra map[string]string
}

// CUDA provider option names of the typed fields.
const (
	cudaKeyDeviceID       = "device_id"
	cudaKeyConvAlgoSearch = "cudnn_conv_algo_search"
	cudaKeyTF32           = "use_tf32"
	cudaKeyMaxWorkspace   = "cudnn_conv_use_max_workspace"
	cudaKeyMemLimit       = "gpu_mem_limit"
	cudaKeyPreferNHWC     = "prefer_nhwc"
)

// refusedCUDAKeys are provider options Extra may not set, with the reason.
var refusedCUDAKeys = map[string]string{
	cudaKeyDeviceID:       "set DeviceID",
	cudaKeyConvAlgoSearch: "set ConvAlgoSearch",
	cudaKeyTF32:           "set TF32",
	cudaKeyMaxWorkspace:   "set MaxWorkspace",
	cudaKeyMemLimit:       "set MemLimit",
	cudaKeyPreferNHWC:     "set PreferNHWC",
	// A captured CUDA graph replays with the device addresses of its
	// capture and skips the copies of bound host inputs and outputs, so
	// with the host-bound I/O this package uses (onnxruntime_go cannot
	// bind device memory) every later Run would return stale results.
	"enable_cuda_graph": "CUDA graphs need inputs and outputs bound to fixed device memory, which onnxruntime_go cannot bind: with host buffers a replayed graph returns stale results",
	// These take a raw cudaStream_t pointer (or change which stream the
	// session's copies use) and are not settable from configuration.
	"user_compute_stream":       "takes a raw CUDA stream pointer",
	"has_user_compute_stream":   "takes a raw CUDA stream pointer",
	"do_copy_in_default_stream": "changes the session's stream discipline",
}

var cudaKeyPattern = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// ProviderOptions returns the provider options o stands for, by their ONNX
// Runtime names: device_id always, every other typed field only when set,
// then Extra. It fails with ErrInvalidOptions on an invalid value.
func (o CUDAOptions) ProviderOptions() (map[string]string, error) {
	if errs := o.problems(); len(errs) > 0 {
		return nil, fmt.Errorf("%w: CUDA: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	m := map[string]string{cudaKeyDeviceID: strconv.Itoa(o.DeviceID)}
	if o.ConvAlgoSearch != "" {
		m[cudaKeyConvAlgoSearch] = o.ConvAlgoSearch
	}
	flag := func(key string, v *bool) {
		if v != nil {
			m[key] = "0"
			if *v {
				m[key] = "1"
			}
		}
	}
	flag(cudaKeyTF32, o.TF32)
	flag(cudaKeyMaxWorkspace, o.MaxWorkspace)
	flag(cudaKeyPreferNHWC, o.PreferNHWC)
	if o.MemLimit > 0 {
		m[cudaKeyMemLimit] = strconv.FormatInt(o.MemLimit, 10)
	}
	maps.Copy(m, o.Extra)
	return m, nil
}

// problems lists every invalid value of o.
func (o CUDAOptions) problems() []error {
	var errs []error
	if o.DeviceID < 0 {
		errs = append(errs, fmt.Errorf("device id %d < 0", o.DeviceID))
	}
	switch o.ConvAlgoSearch {
	case "", ConvAlgoExhaustive, ConvAlgoHeuristic, ConvAlgoDefault:
	default:
		errs = append(errs, fmt.Errorf("cuDNN conv algo search %q, want %s, %s or %s",
			o.ConvAlgoSearch, ConvAlgoExhaustive, ConvAlgoHeuristic, ConvAlgoDefault))
	}
	if o.MemLimit < 0 {
		errs = append(errs, fmt.Errorf("memory limit %d < 0", o.MemLimit))
	}
	for _, k := range slices.Sorted(maps.Keys(o.Extra)) {
		v := o.Extra[k]
		switch why, refused := refusedCUDAKeys[k]; {
		case !cudaKeyPattern.MatchString(k):
			errs = append(errs, fmt.Errorf("provider option %q is not an option name (a-z, 0-9, _)", k))
		case refused:
			errs = append(errs, fmt.Errorf("provider option %s cannot be set here: %s", k, why))
		case v == "" || strings.ContainsAny(v, ",=\n"):
			errs = append(errs, fmt.Errorf("provider option %s=%q: want a non-empty value without ',', '=' or newlines", k, v))
		}
	}
	return errs
}

// CUDASettings are CUDAOptions as text, the way environment variables and
// command-line flags give them. Empty fields keep the defaults.
type CUDASettings struct {
	// DeviceID is a device ordinal (>= 0).
	DeviceID string
	// ConvAlgoSearch is EXHAUSTIVE, HEURISTIC or DEFAULT (any case).
	ConvAlgoSearch string
	// TF32, MaxWorkspace, PreferNHWC and PinHostBuffers are booleans
	// (true/false, 1/0, on/off, yes/no).
	TF32, MaxWorkspace, PreferNHWC, PinHostBuffers string
	// MemLimit is a byte count, optionally with a unit: 512MiB, 8GiB, 2GB.
	MemLimit string
	// Options are further provider options, "key=value,key=value".
	Options string
}

// Parse converts the settings into CUDAOptions, reporting every invalid
// value at once (wrapping ErrInvalidOptions). name maps a field of
// CUDASettings ("DeviceID", "ConvAlgoSearch", ...) to what the user set
// (an environment variable or a flag) for the messages; nil uses the field
// names.
func (s CUDASettings) Parse(name func(field string) string) (CUDAOptions, error) {
	if name == nil {
		name = func(f string) string { return f }
	}
	var o CUDAOptions
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name(field), fmt.Sprintf(format, args...)))
	}
	if v := strings.TrimSpace(s.DeviceID); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			bad("DeviceID", "%q is not a device ordinal (an integer >= 0)", s.DeviceID)
		}
		o.DeviceID = n
	}
	if v := strings.ToUpper(strings.TrimSpace(s.ConvAlgoSearch)); v != "" {
		switch v {
		case ConvAlgoExhaustive, ConvAlgoHeuristic, ConvAlgoDefault:
			o.ConvAlgoSearch = v
		default:
			bad("ConvAlgoSearch", "%q, want %s, %s or %s", s.ConvAlgoSearch, ConvAlgoExhaustive, ConvAlgoHeuristic, ConvAlgoDefault)
		}
	}
	optBool := func(field, v string) *bool {
		if strings.TrimSpace(v) == "" {
			return nil
		}
		b, err := parseBool(v)
		if err != nil {
			bad(field, "%v", err)
			return nil
		}
		return &b
	}
	o.TF32 = optBool("TF32", s.TF32)
	o.MaxWorkspace = optBool("MaxWorkspace", s.MaxWorkspace)
	o.PreferNHWC = optBool("PreferNHWC", s.PreferNHWC)
	if p := optBool("PinHostBuffers", s.PinHostBuffers); p != nil {
		o.PinHostBuffers = *p
	}
	if v := strings.TrimSpace(s.MemLimit); v != "" {
		n, err := ParseBytes(v)
		if err != nil {
			bad("MemLimit", "%v", err)
		}
		o.MemLimit = n
	}
	if v := strings.TrimSpace(s.Options); v != "" {
		o.Extra = map[string]string{}
		for _, kv := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
			k, val = strings.TrimSpace(k), strings.TrimSpace(val)
			switch {
			case !ok || k == "":
				bad("Options", "%q is not key=value", kv)
			case o.Extra[k] != "":
				bad("Options", "%s given twice", k)
			default:
				o.Extra[k] = val
			}
		}
	}
	if len(errs) == 0 {
		if p := o.problems(); len(p) > 0 {
			for _, e := range p {
				bad("Options", "%v", e)
			}
		}
	}
	if len(errs) > 0 {
		return CUDAOptions{}, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return o, nil
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "on", "yes":
		return true, nil
	case "0", "false", "off", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (true/false, 1/0, on/off, yes/no)", v)
}

// ParseBytes parses a byte count: a non-negative integer with an optional
// unit B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
func ParseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	mult := map[string]int64{
		"": 1, "b": 1,
		"kb": 1e3, "mb": 1e6, "gb": 1e9,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
	}[strings.ToLower(unit)]
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || mult == 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a byte count (an integer with an optional unit B, KB, MB, GB, KiB, MiB, GiB)", s)
	}
	return n * mult, nil
}

// isOptionError reports whether an ONNX Runtime error from parsing provider
// options is about an option (an unknown name or a value it cannot parse).
func isOptionError(err error) bool {
	m := strings.ToLower(err.Error())
	return strings.Contains(m, "unknown provider option") || strings.Contains(m, "failed to parse") ||
		strings.Contains(m, "invalid value") || strings.Contains(m, "invalid argument")
}

// cudaHint says what an ONNX Runtime error from the CUDA provider most
// likely means and what to do.
func cudaHint(msg string) string {
	const noProvider = "this onnxruntime library has no CUDA provider next to it: install the CUDA set with scripts/install-onnxruntime.sh --cuda and point " + LibraryEnv + " at it"
	m := strings.ToLower(msg)
	if i := strings.Index(m, ": cannot open shared object file"); i >= 0 {
		// "Failed to load library A with error: B: cannot open shared object file"
		missing := msg[:i]
		if j := strings.LastIndex(missing, "with error: "); j >= 0 {
			missing = missing[j+len("with error: "):]
		}
		missing = filepath.Base(strings.TrimSpace(missing))
		if strings.HasPrefix(missing, "libonnxruntime_providers") {
			return noProvider
		}
		return missing + " is missing (the CUDA provider needs it): scripts/install-onnxruntime.sh --check-cuda names every missing library and where it usually is"
	}
	switch {
	case strings.Contains(m, "failed to load shared library"), strings.Contains(m, "not enabled in this build"),
		strings.Contains(m, "not available"):
		return noProvider
	case strings.Contains(m, "no cuda-capable device"), strings.Contains(m, "cudaerrornodevice"),
		strings.Contains(m, "cuda failure 100"), strings.Contains(m, "invalid device ordinal"),
		strings.Contains(m, "cuda failure 101"), strings.Contains(m, "invalid device id"):
		return "no usable GPU is visible: check nvidia-smi, CUDA_VISIBLE_DEVICES and the device id"
	case strings.Contains(m, "cuda driver version is insufficient"), strings.Contains(m, "cuda failure 35"):
		return "the NVIDIA driver is too old for CUDA 13 (580 or newer is needed)"
	}
	return "this onnxruntime build has no CUDA support, a CUDA library is missing, or no GPU is visible"
}
