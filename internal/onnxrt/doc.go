// Package onnxrt runs classification models with ONNX Runtime. It is the only
// cgo package in CascadeServe: everything else sees plain Go slices.
//
// # Library
//
// ONNX Runtime is loaded at run time from a shared library (see FindLibrary and
// scripts/install-onnxruntime.sh). The ONNX Runtime environment is process-wide,
// so NewRuntime reference-counts it: every Runtime shares one environment, which
// is created by the first NewRuntime and destroyed by the last Close. All
// Runtimes of a process must use the same library path.
//
// # Models
//
// A model must have exactly one input and one output. The input has rank >= 2,
// a dynamic batch axis first and static item axes (for example [-1, 1, 28, 28]
// or [-1, 784]), and element type float32 or uint8. The output is float32 with
// shape [batch, classes], classes >= 2. Anything else, and bytes that are not a
// loadable model, is rejected with an error wrapping ErrUnsupportedModel that
// names the model and what was found.
//
// A float32 model is run with Run (float32 items), a uint8 model with
// RunUint8 (bytes, passed as they are); each refuses the other kind of model
// with ErrInvalidInput. Nothing here converts between the two: how a
// pipeline's items become a model's input is internal/modelinput's job, the
// one transform that replay, profile and the stage workers share.
//
// # Probabilities
//
// Run always returns probabilities. How a model's output is interpreted is
// decided once per session, in this order:
//
//  1. SessionOptions.OutputKind "logits" or "probabilities", if set;
//  2. the model metadata key "cascadeserve.output_kind" (logits|probabilities),
//     which training scripts should set;
//  3. otherwise ("auto") per row at run time: a row whose values all lie in
//     [0, 1] and sum to 1±1e-3 is taken as probabilities and copied unchanged;
//     any other row is taken as logits and softmax is applied (in float64,
//     max-subtracted).
//
// A row that ends up with a NaN or infinite probability makes Run fail.
//
// # Buffers
//
// A Session keeps, per batch size it has seen, an ONNX Runtime input and output
// tensor bound to the session with an IoBinding. All tensors of a session are
// views over one input and one output buffer sized for the largest batch seen
// so far (growing geometrically), so the cache costs only tensor headers. Once a
// batch size is warm, Run allocates nothing: it copies the items into the input
// buffer, runs the binding and post-processes the output buffer into dst.
//
// With the CUDA provider, ONNX Runtime copies the bound input to the GPU when it
// is bound, so Run binds it again each time, and copies the output back into the
// output buffer. With CUDAOptions.PinHostBuffers both buffers are mapped outside
// the Go heap and page-locked with cudaHostRegister (the CUDA runtime is opened
// with dlopen, the only C this package has of its own), so those copies are DMA
// transfers. onnxruntime_go cannot bind device memory (its tensors all use its
// CPU OrtMemoryInfo), which is also why CUDA graphs are refused.
//
// # CUDA
//
// SessionOptions.Provider "cuda" appends the CUDA execution provider with
// CUDAOptions (ProviderOptions lists the ONNX Runtime options they stand for;
// CUDASettings parses them from text). The library must be a build with the CUDA
// provider next to it: FindLibraryFor("cuda", ...) finds the set that
// scripts/install-onnxruntime.sh --cuda installs. When CUDA cannot run (a
// CPU-only library, a missing CUDA library, no GPU), Open fails with a one-line
// error wrapping ErrProviderUnavailable that says which is most likely.
//
// # Concurrency
//
// A Runtime is safe for concurrent use. A Session is not meant to be shared:
// its buffers are reused across calls, so Run and Close take a per-session lock
// and concurrent calls on one Session run one at a time. For parallel inference
// open one Session per goroutine (IntraOpThreads adds threads inside one Run).
// The dst slice returned by Run belongs to the caller.
package onnxrt
