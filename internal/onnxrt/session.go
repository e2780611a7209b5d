package onnxrt

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// Errors callers branch on. They are returned wrapped with context.
var (
	// ErrUnsupportedModel: the bytes are not a loadable model, or its inputs
	// and outputs are not a classifier this package can run.
	ErrUnsupportedModel = errors.New("unsupported model")
	// ErrProviderUnavailable: the requested execution provider cannot be used
	// with this library or on this machine.
	ErrProviderUnavailable = errors.New("execution provider unavailable")
	// ErrInvalidOptions: SessionOptions holds an unknown value.
	ErrInvalidOptions = errors.New("invalid session options")
	// ErrInvalidInput: the arguments of Run do not match the model.
	ErrInvalidInput = errors.New("invalid input")
	// ErrInvalidOutput: the model produced NaN or infinite probabilities.
	ErrInvalidOutput = errors.New("invalid model output")
)

// Execution providers.
const (
	ProviderCPU  = "cpu"
	ProviderCUDA = "cuda"
)

// Output kinds (see the package documentation).
const (
	OutputAuto          = "auto"
	OutputLogits        = "logits"
	OutputProbabilities = "probabilities"
)

// MetadataOutputKind is the model metadata key that declares whether the
// output holds logits or probabilities.
const MetadataOutputKind = "cascadeserve.output_kind"

// Input element types reported in ModelInfo.InputType.
const (
	InputFP32  = "FP32"
	InputUINT8 = "UINT8"
)

// maxCachedBatchSizes bounds the number of batch sizes a Session keeps bound
// tensors for; past it the cache is dropped and rebuilt on demand.
const maxCachedBatchSizes = 256

// SessionOptions configures a Session. The zero value is valid.
type SessionOptions struct {
	// IntraOpThreads is the number of threads ONNX Runtime may use inside one
	// Run. 0 means 1: by default a Session is single-threaded and parallelism
	// comes from running several Sessions. Inter-op threads are always 1 and
	// nodes execute sequentially; with more than one intra-op thread, idle
	// threads do not spin, so sessions sharing a machine do not burn CPU.
	IntraOpThreads int
	// Provider is the execution provider: "cpu" (default, also "") or "cuda".
	// "cuda" fails with ErrProviderUnavailable when the library has no CUDA
	// support, a CUDA library is missing or no GPU is usable; the error
	// says which it most likely is.
	Provider string
	// CUDA configures the CUDA provider; ignored with the CPU provider.
	// Invalid values fail with ErrInvalidOptions whatever the provider.
	CUDA CUDAOptions
	// OutputKind is "auto" (default, also ""), "logits" or "probabilities";
	// see the package documentation.
	OutputKind string

	// pinner, when set (tests), page-locks the host buffers whatever the
	// provider, instead of the CUDA runtime with CUDA.PinHostBuffers.
	pinner pinner
}

func (o SessionOptions) normalized() (SessionOptions, error) {
	var errs []error
	if o.IntraOpThreads < 0 {
		errs = append(errs, fmt.Errorf("IntraOpThreads %d < 0", o.IntraOpThreads))
	}
	if o.IntraOpThreads == 0 {
		o.IntraOpThreads = 1
	}
	switch o.Provider {
	case "":
		o.Provider = ProviderCPU
	case ProviderCPU, ProviderCUDA:
	default:
		errs = append(errs, fmt.Errorf("provider %q, want %q or %q", o.Provider, ProviderCPU, ProviderCUDA))
	}
	switch o.OutputKind {
	case "":
		o.OutputKind = OutputAuto
	case OutputAuto, OutputLogits, OutputProbabilities:
	default:
		errs = append(errs, fmt.Errorf("output kind %q, want %q, %q or %q",
			o.OutputKind, OutputAuto, OutputLogits, OutputProbabilities))
	}
	for _, err := range o.CUDA.problems() {
		errs = append(errs, fmt.Errorf("CUDA: %w", err))
	}
	if len(errs) > 0 {
		return o, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	return o, nil
}

// ModelInfo describes a model as the Session runs it.
type ModelInfo struct {
	Name       string
	InputName  string
	OutputName string
	// ItemShape is the input shape without the batch axis, e.g. [1 28 28] or [784].
	ItemShape  []int64
	NumClasses int
	// InputType is the model's input element type: "FP32" or "UINT8".
	InputType string
	// OutputKind is how the output is interpreted: "logits", "probabilities"
	// (from SessionOptions or model metadata) or "auto" (decided per row).
	OutputKind string
}

// ItemSize returns the number of values in one item (the product of ItemShape).
func (m ModelInfo) ItemSize() int {
	n := 1
	for _, d := range m.ItemShape {
		n *= int(d)
	}
	return n
}

// Session runs one model. See the package documentation for its buffer reuse
// and concurrency contract.
type Session struct {
	rt       *Runtime
	info     ModelInfo
	itemSize int
	// rebindInput is set for device providers: ONNX Runtime copies a bound
	// input to the device when it is bound, so it must be bound again after
	// the host buffer changes. CPU bindings refer to the buffer directly.
	rebindInput bool

	// pin page-locks the host buffers (nil: plain Go memory).
	pin pinner

	mu     sync.Mutex
	closed bool
	sess   *ort.DynamicAdvancedSession
	// One backing buffer each for input and output, capItems items long; the
	// tensors in ios are views over their prefixes.
	capItems int
	buf      *hostBuffers
	ios      map[int]*batchIO
}

// batchIO holds the bound tensors for one batch size.
type batchIO struct {
	in   ort.Value
	out  ort.Value
	bind *ort.IoBinding
}

func (b *batchIO) destroy() {
	if b.bind != nil {
		_ = b.bind.Destroy()
	}
	if b.in != nil {
		_ = b.in.Destroy()
	}
	if b.out != nil {
		_ = b.out.Destroy()
	}
}

// OpenFile opens the model at path; its name is the file name without extension.
func (r *Runtime) OpenFile(path string, opts SessionOptions) (*Session, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("onnxrt: %w", err)
	}
	return r.Open(strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)), data, opts)
}

// Open creates a Session for the model in onnx (the bytes of a .onnx file).
// name identifies the model in errors and ModelInfo.
func (r *Runtime) Open(name string, onnx []byte, opts SessionOptions) (*Session, error) {
	release, err := r.acquire()
	if err != nil {
		return nil, fmt.Errorf("onnxrt: open model %q: %w", name, err)
	}
	defer release()

	opts, err = opts.normalized()
	if err != nil {
		return nil, fmt.Errorf("onnxrt: open model %q: %w", name, err)
	}
	unsupported := func(format string, args ...any) error {
		return fmt.Errorf("onnxrt: model %q: %s: %w", name, fmt.Sprintf(format, args...), ErrUnsupportedModel)
	}
	if len(onnx) == 0 {
		return nil, unsupported("empty model data")
	}
	ins, outs, err := ort.GetInputOutputInfoWithONNXData(onnx)
	if err != nil {
		return nil, unsupported("cannot load: %s", oneLine(err))
	}
	info, err := describe(name, ins, outs)
	if err != nil {
		return nil, unsupported("%s", err)
	}

	so, err := newORTSessionOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("onnxrt: model %q: %w", name, err)
	}
	defer func() { _ = so.Destroy() }()

	sess, err := ort.NewDynamicAdvancedSessionWithONNXData(onnx,
		[]string{info.InputName}, []string{info.OutputName}, so)
	if err != nil {
		if opts.Provider == ProviderCUDA && strings.Contains(strings.ToLower(err.Error()), "cuda") {
			return nil, fmt.Errorf("onnxrt: model %q: CUDA session: %s (%s): %w", name, oneLine(err), cudaHint(err.Error()), ErrProviderUnavailable)
		}
		return nil, unsupported("create session: %s", oneLine(err))
	}
	kind, err := outputKind(opts.OutputKind, sess)
	if err != nil {
		_ = sess.Destroy()
		return nil, unsupported("%s", err)
	}
	info.OutputKind = kind

	s := &Session{
		rt:          r,
		info:        info,
		itemSize:    info.ItemSize(),
		rebindInput: opts.Provider != ProviderCPU,
		pin:         opts.pinner,
		sess:        sess,
		ios:         make(map[int]*batchIO),
	}
	if s.pin == nil && opts.Provider == ProviderCUDA && opts.CUDA.PinHostBuffers {
		if s.pin, err = newCUDAPinner(); err != nil {
			_ = sess.Destroy()
			return nil, fmt.Errorf("onnxrt: model %q: %w", name, err)
		}
	}
	if s.pin != nil {
		// Pin now, so a failure shows at start rather than on the first batch.
		if _, err := s.batch(1); err != nil {
			s.dropIOs()
			_ = s.releaseBuffers()
			_ = sess.Destroy()
			return nil, fmt.Errorf("onnxrt: model %q: %s: %w", name, err, ErrProviderUnavailable)
		}
	}
	r.track(s)
	return s, nil
}

// describe checks that the model is a single-input, single-output classifier
// and returns its ModelInfo (without OutputKind).
func describe(name string, ins, outs []ort.InputOutputInfo) (ModelInfo, error) {
	if len(ins) != 1 || len(outs) != 1 {
		return ModelInfo{}, fmt.Errorf("has %d inputs and %d outputs, want exactly one of each", len(ins), len(outs))
	}
	in, out := ins[0], outs[0]
	info := ModelInfo{Name: name, InputName: in.Name, OutputName: out.Name}

	if in.OrtValueType != ort.ONNXTypeTensor {
		return info, fmt.Errorf("input %q is a %s, want a tensor", in.Name, in.OrtValueType)
	}
	switch in.DataType {
	case ort.TensorElementDataTypeFloat:
		info.InputType = InputFP32
	case ort.TensorElementDataTypeUint8:
		info.InputType = InputUINT8
	default:
		return info, fmt.Errorf("input %q has element type %s, want FLOAT (float32) or UINT8", in.Name, dtypeName(in.DataType))
	}
	dims := in.Dimensions
	if len(dims) < 2 {
		return info, fmt.Errorf("input %q has rank %d (shape %v), want rank >= 2 with a dynamic batch axis first",
			in.Name, len(dims), dims)
	}
	if dims[0] != -1 {
		return info, fmt.Errorf("input %q has a static batch axis (shape %v), want it dynamic (-1)", in.Name, dims)
	}
	for i, d := range dims[1:] {
		if d <= 0 {
			return info, fmt.Errorf("input %q axis %d is not static (shape %v), want static item axes", in.Name, i+1, dims)
		}
	}
	info.ItemShape = append([]int64(nil), dims[1:]...)

	if out.OrtValueType != ort.ONNXTypeTensor {
		return info, fmt.Errorf("output %q is a %s, want a tensor", out.Name, out.OrtValueType)
	}
	if out.DataType != ort.TensorElementDataTypeFloat {
		return info, fmt.Errorf("output %q has element type %s, want FLOAT (float32)", out.Name, dtypeName(out.DataType))
	}
	od := out.Dimensions
	if len(od) != 2 || od[0] != -1 || od[1] < 2 {
		return info, fmt.Errorf("output %q has shape %v, want [batch, classes] with a dynamic batch and classes >= 2", out.Name, od)
	}
	info.NumClasses = int(od[1])
	return info, nil
}

func dtypeName(t ort.TensorElementDataType) string {
	return strings.TrimPrefix(t.String(), "ONNX_TENSOR_ELEMENT_DATA_TYPE_")
}

func newORTSessionOptions(opts SessionOptions) (*ort.SessionOptions, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	fail := func(what string, err error) (*ort.SessionOptions, error) {
		_ = so.Destroy()
		return nil, fmt.Errorf("session options: %s: %w", what, err)
	}
	if err := so.SetIntraOpNumThreads(opts.IntraOpThreads); err != nil {
		return fail("intra-op threads", err)
	}
	if err := so.SetInterOpNumThreads(1); err != nil {
		return fail("inter-op threads", err)
	}
	if err := so.SetExecutionMode(ort.ExecutionModeSequential); err != nil {
		return fail("execution mode", err)
	}
	if err := so.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
		return fail("disable spinning", err)
	}
	if opts.Provider == ProviderCUDA {
		if err := appendCUDA(so, opts.CUDA); err != nil {
			_ = so.Destroy()
			return nil, err
		}
	}
	return so, nil
}

func appendCUDA(so *ort.SessionOptions, opts CUDAOptions) error {
	m, err := opts.ProviderOptions()
	if err != nil {
		return err
	}
	co, err := ort.NewCUDAProviderOptions()
	if err != nil {
		return fmt.Errorf("CUDA provider options: %s (%s): %w", oneLine(err), cudaHint(err.Error()), ErrProviderUnavailable)
	}
	defer func() { _ = co.Destroy() }()
	if err := co.Update(m); err != nil {
		// The provider library parses its options (and checks device_id
		// against the visible GPUs): an option it refuses is the caller's
		// error; anything else (the library or a GPU missing) is the
		// provider's.
		if isOptionError(err) {
			return fmt.Errorf("CUDA provider options %v: %s: %w", m, oneLine(err), ErrInvalidOptions)
		}
		return fmt.Errorf("CUDA provider options: %s (%s): %w", oneLine(err), cudaHint(err.Error()), ErrProviderUnavailable)
	}
	if err := so.AppendExecutionProviderCUDA(co); err != nil {
		return fmt.Errorf("append CUDA provider: %s (%s): %w", oneLine(err), cudaHint(err.Error()), ErrProviderUnavailable)
	}
	return nil
}

// outputKind resolves the OutputKind option against the model metadata.
func outputKind(opt string, sess *ort.DynamicAdvancedSession) (string, error) {
	if opt != OutputAuto {
		return opt, nil
	}
	md, err := sess.GetModelMetadata()
	if err != nil {
		return "", fmt.Errorf("read metadata: %s", oneLine(err))
	}
	defer func() { _ = md.Destroy() }()
	v, ok, err := md.LookupCustomMetadataMap(MetadataOutputKind)
	if err != nil {
		return "", fmt.Errorf("read metadata %s: %s", MetadataOutputKind, oneLine(err))
	}
	if !ok {
		return OutputAuto, nil
	}
	switch v {
	case OutputLogits, OutputProbabilities:
		return v, nil
	}
	return "", fmt.Errorf("metadata %s=%q, want %q or %q", MetadataOutputKind, v, OutputLogits, OutputProbabilities)
}

// oneLine flattens an ONNX Runtime message, which may span lines.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// Info describes the model.
func (s *Session) Info() ModelInfo {
	info := s.info
	info.ItemShape = append([]int64(nil), s.info.ItemShape...)
	return info
}

// Run classifies n items of a FP32 model laid out contiguously in input
// (n*ItemSize values) and writes n*NumClasses probabilities, item after item,
// into dst, which must be at least that long. It returns dst[:n*NumClasses].
// A UINT8 model is run with RunUint8: Run refuses it (ErrInvalidInput) rather
// than guess how floats map to its bytes (see internal/modelinput).
func (s *Session) Run(input []float32, n int, dst []float32) ([]float32, error) {
	if s.info.InputType != InputFP32 {
		return nil, fmt.Errorf("onnxrt: run %q: the model takes %s input, not float32 (use RunUint8): %w",
			s.info.Name, s.info.InputType, ErrInvalidInput)
	}
	return s.run(input, nil, len(input), n, dst)
}

// RunUint8 is Run for a UINT8 model: input holds n*ItemSize bytes, passed
// to the model as they are. It refuses a FP32 model (ErrInvalidInput).
func (s *Session) RunUint8(input []uint8, n int, dst []float32) ([]float32, error) {
	if s.info.InputType != InputUINT8 {
		return nil, fmt.Errorf("onnxrt: run %q: the model takes %s input, not uint8 (use Run): %w",
			s.info.Name, s.info.InputType, ErrInvalidInput)
	}
	return s.run(nil, input, len(input), n, dst)
}

// run checks the sizes, copies f32 or u8 (whichever the model takes) into
// the input buffer and runs a batch of n items.
func (s *Session) run(f32 []float32, u8 []uint8, values, n int, dst []float32) ([]float32, error) {
	if n <= 0 {
		return nil, fmt.Errorf("onnxrt: run %q: batch size %d: %w", s.info.Name, n, ErrInvalidInput)
	}
	if n > math.MaxInt32/max(s.itemSize, s.info.NumClasses) {
		return nil, fmt.Errorf("onnxrt: run %q: batch size %d too large: %w", s.info.Name, n, ErrInvalidInput)
	}
	if want := n * s.itemSize; values != want {
		return nil, fmt.Errorf("onnxrt: run %q: %d input values for %d items of %v, want %d: %w",
			s.info.Name, values, n, s.info.ItemShape, want, ErrInvalidInput)
	}
	nOut := n * s.info.NumClasses
	if len(dst) < nOut {
		return nil, fmt.Errorf("onnxrt: run %q: dst holds %d values, want >= %d: %w",
			s.info.Name, len(dst), nOut, ErrInvalidInput)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("onnxrt: run %q: %w", s.info.Name, ErrClosed)
	}
	io, err := s.batch(n)
	if err != nil {
		return nil, fmt.Errorf("onnxrt: run %q: batch %d: %w", s.info.Name, n, err)
	}
	if s.buf.inU8 != nil {
		copy(s.buf.inU8, u8)
	} else {
		copy(s.buf.inF32, f32)
	}
	if s.rebindInput {
		if err := io.bind.BindInput(s.info.InputName, io.in); err != nil {
			return nil, fmt.Errorf("onnxrt: run %q: bind input: %w", s.info.Name, err)
		}
	}
	if err := s.sess.RunWithBinding(io.bind); err != nil {
		return nil, fmt.Errorf("onnxrt: run %q: batch %d: %s", s.info.Name, n, oneLine(err))
	}
	dst = dst[:nOut]
	if err := s.probabilities(s.buf.out[:nOut], dst); err != nil {
		return nil, fmt.Errorf("onnxrt: run %q: %w", s.info.Name, err)
	}
	return dst, nil
}

// batch returns the bound tensors for batch size n, creating them (and
// growing the backing buffers) when needed. The caller holds s.mu.
func (s *Session) batch(n int) (*batchIO, error) {
	if io := s.ios[n]; io != nil {
		return io, nil
	}
	if n > s.capItems {
		c := max(n, 2*s.capItems)
		buf, err := newHostBuffers(c, s.itemSize, s.info.NumClasses, s.info.InputType == InputUINT8, s.pin)
		if err != nil {
			return nil, err
		}
		// Existing tensors point into the old buffers: drop them all.
		s.dropIOs()
		if err := s.releaseBuffers(); err != nil {
			_ = buf.release()
			return nil, err
		}
		s.buf, s.capItems = buf, c
	}
	if len(s.ios) >= maxCachedBatchSizes {
		s.dropIOs()
	}

	io := &batchIO{}
	inShape := append(ort.Shape{int64(n)}, s.info.ItemShape...)
	var err error
	if s.buf.inU8 != nil {
		io.in, err = ort.NewTensor(inShape, s.buf.inU8)
	} else {
		io.in, err = ort.NewTensor(inShape, s.buf.inF32)
	}
	if err != nil {
		return nil, fmt.Errorf("input tensor: %w", err)
	}
	if io.out, err = ort.NewTensor(ort.NewShape(int64(n), int64(s.info.NumClasses)), s.buf.out); err != nil {
		io.destroy()
		return nil, fmt.Errorf("output tensor: %w", err)
	}
	if io.bind, err = s.sess.CreateIoBinding(); err != nil {
		io.destroy()
		return nil, fmt.Errorf("io binding: %w", err)
	}
	if err := io.bind.BindInput(s.info.InputName, io.in); err != nil {
		io.destroy()
		return nil, fmt.Errorf("bind input: %w", err)
	}
	if err := io.bind.BindOutput(s.info.OutputName, io.out); err != nil {
		io.destroy()
		return nil, fmt.Errorf("bind output: %w", err)
	}
	s.ios[n] = io
	return io, nil
}

func (s *Session) dropIOs() {
	for n, io := range s.ios {
		io.destroy()
		delete(s.ios, n)
	}
}

// releaseBuffers frees the host buffers; the tensors over them must be
// gone (dropIOs).
func (s *Session) releaseBuffers() error {
	if s.buf == nil {
		return nil
	}
	err := s.buf.release()
	s.buf, s.capItems = nil, 0
	if err != nil {
		return fmt.Errorf("release host buffers: %w", err)
	}
	return nil
}

// probabilities converts raw model output rows into probabilities in dst.
func (s *Session) probabilities(raw, dst []float32) error {
	c := s.info.NumClasses
	for i := 0; i+c <= len(raw); i += c {
		row, out := raw[i:i+c], dst[i:i+c]
		switch {
		case s.info.OutputKind == OutputProbabilities,
			s.info.OutputKind == OutputAuto && looksLikeProbabilities(row):
			copy(out, row)
		default:
			softmax(out, row)
		}
		for _, p := range out {
			if math.IsNaN(float64(p)) || math.IsInf(float64(p), 0) {
				return fmt.Errorf("item %d: output row %v: %w", i/c, row, ErrInvalidOutput)
			}
		}
	}
	return nil
}

// probabilityTolerance is how far from 1 the sum of a row may be for "auto"
// to treat it as probabilities.
const probabilityTolerance = 1e-3

func looksLikeProbabilities(row []float32) bool {
	var sum float64
	for _, v := range row {
		if !(v >= 0 && v <= 1) { // also rejects NaN
			return false
		}
		sum += float64(v)
	}
	return math.Abs(sum-1) <= probabilityTolerance
}

// softmax writes softmax(logits) into dst, computing in float64.
func softmax(dst, logits []float32) {
	m := math.Inf(-1)
	for _, v := range logits {
		m = math.Max(m, float64(v))
	}
	var sum float64
	for i, v := range logits {
		e := math.Exp(float64(v) - m)
		dst[i] = float32(e)
		sum += e
	}
	inv := 1 / sum
	for i := range dst {
		dst[i] = float32(float64(dst[i]) * inv)
	}
}

// Close releases the session. Closing twice is a no-op.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.dropIOs()
	err := s.sess.Destroy()
	s.sess = nil
	err = errors.Join(err, s.releaseBuffers())
	s.mu.Unlock()
	s.rt.forget(s)
	if err != nil {
		return fmt.Errorf("onnxrt: close %q: %w", s.info.Name, err)
	}
	return nil
}
