package cli

import (
	"flag"
	"fmt"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
)

// providerFlags are the execution provider and CUDA provider options that
// profile, bench, up and demo share. Each CUDA flag stands for a stage
// worker variable CASCADE_WORKER_CUDA_*; empty keeps the worker's setting
// (and ONNX Runtime's default).
type providerFlags struct {
	provider string
	cuda     onnxrt.CUDASettings
}

// cudaFlagNames maps a CUDASettings field to its flag and worker variable.
var cudaFlagNames = map[string]struct{ flag, env string }{
	"DeviceID":       {"cuda-device", "CASCADE_WORKER_CUDA_DEVICE_ID"},
	"ConvAlgoSearch": {"cuda-conv-algo", "CASCADE_WORKER_CUDA_CONV_ALGO_SEARCH"},
	"TF32":           {"cuda-tf32", "CASCADE_WORKER_CUDA_TF32"},
	"MaxWorkspace":   {"cuda-max-workspace", "CASCADE_WORKER_CUDA_MAX_WORKSPACE"},
	"MemLimit":       {"cuda-mem-limit", "CASCADE_WORKER_CUDA_MEM_LIMIT"},
	"PreferNHWC":     {"cuda-prefer-nhwc", "CASCADE_WORKER_CUDA_PREFER_NHWC"},
	"PinHostBuffers": {"cuda-pin", "CASCADE_WORKER_CUDA_PIN_HOST_BUFFERS"},
	"Options":        {"cuda-options", "CASCADE_WORKER_CUDA_OPTIONS"},
}

// register adds --provider (default defProvider; "" leaves the worker's
// CASCADE_WORKER_PROVIDER) and the --cuda-* flags.
func (f *providerFlags) register(fs *flag.FlagSet, defProvider string) {
	what := "ONNX Runtime execution provider: cpu or cuda"
	if defProvider == "" {
		what += " (default: CASCADE_WORKER_PROVIDER or cpu)"
	}
	fs.StringVar(&f.provider, "provider", defProvider, what)
	fs.StringVar(&f.cuda.DeviceID, "cuda-device", "", "CUDA: GPU ordinal (default 0)")
	fs.StringVar(&f.cuda.ConvAlgoSearch, "cuda-conv-algo", "", "CUDA: cuDNN convolution algorithm search, EXHAUSTIVE, HEURISTIC or DEFAULT (default: ONNX Runtime's, EXHAUSTIVE)")
	fs.StringVar(&f.cuda.TF32, "cuda-tf32", "", "CUDA: TF32 tensor-core math for float32, true or false (default: ONNX Runtime's, on)")
	fs.StringVar(&f.cuda.MaxWorkspace, "cuda-max-workspace", "", "CUDA: let cuDNN's algorithm search use as much memory as it needs, true or false (default on)")
	fs.StringVar(&f.cuda.MemLimit, "cuda-mem-limit", "", "CUDA: cap of the GPU memory arena, e.g. 8GiB (default none)")
	fs.StringVar(&f.cuda.PreferNHWC, "cuda-prefer-nhwc", "", "CUDA: NHWC convolutions, true or false (default off)")
	fs.StringVar(&f.cuda.PinHostBuffers, "cuda-pin", "", "CUDA: page-lock the input and output buffers (cudaHostRegister), true or false (default false)")
	fs.StringVar(&f.cuda.Options, "cuda-options", "", "CUDA: further provider options, key=value,... by their ONNX Runtime names")
}

// check validates the flags; the errors name them.
func (f *providerFlags) check() error {
	if f.provider != "" && f.provider != onnxrt.ProviderCPU && f.provider != onnxrt.ProviderCUDA {
		return fmt.Errorf("%w: --provider %q, want %s or %s", ErrUsage, f.provider, onnxrt.ProviderCPU, onnxrt.ProviderCUDA)
	}
	if _, err := f.cuda.Parse(func(field string) string { return "--" + cudaFlagNames[field].flag }); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	return nil
}

// sessionOptions are the options of in-process sessions: the provider and,
// for cuda, its options. threads is IntraOpThreads.
func (f *providerFlags) sessionOptions(threads int) (onnxrt.SessionOptions, error) {
	if err := f.check(); err != nil {
		return onnxrt.SessionOptions{}, err
	}
	opts := onnxrt.SessionOptions{IntraOpThreads: threads, Provider: f.provider}
	if opts.Provider == "" {
		opts.Provider = onnxrt.ProviderCPU
	}
	if opts.Provider == onnxrt.ProviderCUDA {
		opts.CUDA, _ = f.cuda.Parse(nil) // checked above
	}
	return opts, nil
}

// workerEnv returns the stage worker variables the flags set (none for
// flags left empty).
func (f *providerFlags) workerEnv() map[string]string {
	env := map[string]string{}
	if f.provider != "" {
		env["CASCADE_WORKER_PROVIDER"] = f.provider
	}
	for field, v := range map[string]string{
		"DeviceID": f.cuda.DeviceID, "ConvAlgoSearch": f.cuda.ConvAlgoSearch, "TF32": f.cuda.TF32,
		"MaxWorkspace": f.cuda.MaxWorkspace, "MemLimit": f.cuda.MemLimit, "PreferNHWC": f.cuda.PreferNHWC,
		"PinHostBuffers": f.cuda.PinHostBuffers, "Options": f.cuda.Options,
	} {
		if v != "" {
			env[cudaFlagNames[field].env] = v
		}
	}
	return env
}
