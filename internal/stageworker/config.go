package stageworker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/envconfig"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Config configures a stage worker. Every field is read from the
// environment with the prefix CASCADE_ (see ConfigFromEnv).
type Config struct {
	// Process holds the settings every service reads alike: NATS URL,
	// pipeline, metrics endpoint protection, logging.
	servicemain.Process
	// MetricsAddr is where /metrics and /healthz are served
	// (CASCADE_METRICS_ADDR, default :9090; set it to the empty string to
	// serve nothing).
	MetricsAddr string `env:"METRICS_ADDR" envDefault:"127.0.0.1:9090"`

	// Models lists the models this worker hosts, comma-separated
	// (CASCADE_WORKER_MODELS). Empty: every model some gear of the plan
	// uses. All of them are loaded at start, so a gear switch never loads
	// anything.
	Models []string `env:"WORKER_MODELS" envSeparator:","`
	// Runners is the number of inference runners (goroutines, each with its
	// own ONNX Runtime session of every hosted model) (CASCADE_WORKER_RUNNERS,
	// default 2).
	Runners int `env:"WORKER_RUNNERS" envDefault:"2"`
	// Threads is the number of intra-op threads per session
	// (CASCADE_WORKER_THREADS, default 1).
	Threads int `env:"WORKER_THREADS" envDefault:"1"`
	// Provider is the ONNX Runtime execution provider, cpu or cuda
	// (CASCADE_WORKER_PROVIDER, default cpu). With cuda every hosted model
	// is loaded on the GPU at start; a missing CUDA library or no usable GPU
	// fails the start with one error saying which.
	Provider string `env:"WORKER_PROVIDER" envDefault:"cpu"`
	// CUDA holds the CUDA provider's options, ignored with provider cpu.
	CUDA CUDAConfig `envPrefix:"WORKER_CUDA_"`
	// AllowProviderMismatch lets the worker serve models whose plan
	// profile was measured on another provider than Provider
	// (CASCADE_WORKER_ALLOW_PROVIDER_MISMATCH, default false: such a plan
	// is refused at start, since its latencies and capacities do not hold).
	AllowProviderMismatch bool `env:"WORKER_ALLOW_PROVIDER_MISMATCH"`
	// ModelDir is the folder model files (Model.File of the plan) are read
	// from (CASCADE_MODEL_DIR). The stage-worker binary requires it and
	// opens it with ModelFiles (`cascadeserve up` hands over the plan's
	// folder or its embedded MNIST models instead). For the MNIST plan it
	// is models/mnist in the repository.
	ModelDir string `env:"MODEL_DIR"`
	// ONNXRuntimeLib is the ONNX Runtime shared library
	// (CASCADE_ONNXRUNTIME_LIB). Empty: onnxrt.FindLibraryFor's search
	// for the provider (with cuda, the CUDA library set of
	// scripts/install-onnxruntime.sh --cuda).
	ONNXRuntimeLib string `env:"ONNXRUNTIME_LIB"`

	// InboxPrefixes are the prefixes one of which every reply subject of an
	// item must have (CASCADE_INBOX_PREFIX, comma-separated, default
	// "_INBOX.,_R_."; the same as the ingress's). An item whose reply subject
	// is not a literal subject under one is invalid: the worker never
	// publishes there.
	InboxPrefixes []string `env:"INBOX_PREFIX" envSeparator:"," envDefault:"_INBOX.,_R_."`

	// IdleWait is how long one pull for a first item blocks when a runner
	// has nothing to do, and how stale a model's backlog estimate may get
	// before a busy runner probes it (CASCADE_WORKER_IDLE_WAIT, default
	// 100ms). It bounds shutdown time, never an item's wait.
	IdleWait time.Duration `env:"WORKER_IDLE_WAIT" envDefault:"100ms"`
	// NakDelay is how long a message that failed transiently waits before it
	// is redelivered (CASCADE_WORKER_NAK_DELAY, default 1s).
	NakDelay time.Duration `env:"WORKER_NAK_DELAY" envDefault:"1s"`
	// PublishTimeout bounds the wait for the PubAcks of one batch
	// (CASCADE_WORKER_PUBLISH_TIMEOUT, default 5s). A timeout is a
	// transient failure: the inputs are redelivered after NakDelay.
	PublishTimeout time.Duration `env:"WORKER_PUBLISH_TIMEOUT" envDefault:"5s"`
}

// CUDAConfig holds the CUDA provider options as text; empty keeps ONNX
// Runtime's default. See onnxrt.CUDAOptions for what each does.
type CUDAConfig struct {
	// DeviceID is the GPU's CUDA ordinal (CASCADE_WORKER_CUDA_DEVICE_ID,
	// default 0).
	DeviceID string `env:"DEVICE_ID"`
	// ConvAlgoSearch is EXHAUSTIVE, HEURISTIC or DEFAULT
	// (CASCADE_WORKER_CUDA_CONV_ALGO_SEARCH; ONNX Runtime's default is
	// EXHAUSTIVE).
	ConvAlgoSearch string `env:"CONV_ALGO_SEARCH"`
	// TF32 is true or false (CASCADE_WORKER_CUDA_TF32; ONNX Runtime's
	// default is on).
	TF32 string `env:"TF32"`
	// MaxWorkspace is true or false (CASCADE_WORKER_CUDA_MAX_WORKSPACE;
	// default on).
	MaxWorkspace string `env:"MAX_WORKSPACE"`
	// MemLimit caps the GPU memory arena, e.g. 8GiB
	// (CASCADE_WORKER_CUDA_MEM_LIMIT; default no limit).
	MemLimit string `env:"MEM_LIMIT"`
	// PreferNHWC is true or false (CASCADE_WORKER_CUDA_PREFER_NHWC;
	// default off).
	PreferNHWC string `env:"PREFER_NHWC"`
	// PinHostBuffers page-locks the runners' input and output buffers
	// (CASCADE_WORKER_CUDA_PIN_HOST_BUFFERS, default false).
	PinHostBuffers string `env:"PIN_HOST_BUFFERS"`
	// Options are further provider options, key=value,...
	// (CASCADE_WORKER_CUDA_OPTIONS).
	Options string `env:"OPTIONS"`
}

// cudaEnv maps a CUDASettings field to its variable.
var cudaEnv = map[string]string{
	"DeviceID": "CASCADE_WORKER_CUDA_DEVICE_ID", "ConvAlgoSearch": "CASCADE_WORKER_CUDA_CONV_ALGO_SEARCH",
	"TF32": "CASCADE_WORKER_CUDA_TF32", "MaxWorkspace": "CASCADE_WORKER_CUDA_MAX_WORKSPACE",
	"MemLimit": "CASCADE_WORKER_CUDA_MEM_LIMIT", "PreferNHWC": "CASCADE_WORKER_CUDA_PREFER_NHWC",
	"PinHostBuffers": "CASCADE_WORKER_CUDA_PIN_HOST_BUFFERS", "Options": "CASCADE_WORKER_CUDA_OPTIONS",
}

// Parse parses the settings (errors name the variables).
func (c CUDAConfig) Parse() (onnxrt.CUDAOptions, error) {
	return onnxrt.CUDASettings{
		DeviceID: c.DeviceID, ConvAlgoSearch: c.ConvAlgoSearch, TF32: c.TF32, MaxWorkspace: c.MaxWorkspace,
		MemLimit: c.MemLimit, PreferNHWC: c.PreferNHWC, PinHostBuffers: c.PinHostBuffers, Options: c.Options,
	}.Parse(func(f string) string { return cudaEnv[f] })
}

// SessionOptions are the options every session of the worker opens with.
func (c Config) SessionOptions() (onnxrt.SessionOptions, error) {
	opts := onnxrt.SessionOptions{IntraOpThreads: c.Threads, Provider: c.Provider}
	if c.Provider == onnxrt.ProviderCUDA {
		cuda, err := c.CUDA.Parse()
		if err != nil {
			return opts, err
		}
		opts.CUDA = cuda
	}
	return opts, nil
}

// ConfigFromEnv reads a Config from environ (keys with the CASCADE_
// prefix; the process environment in main, a map in tests) and validates
// it. An explicitly empty CASCADE_METRICS_ADDR disables the metrics server.
func ConfigFromEnv(environ map[string]string) (Config, error) {
	var cfg Config
	if err := envconfig.Parse(&cfg, environ, map[string]*string{"CASCADE_METRICS_ADDR": &cfg.MetricsAddr}); err != nil {
		return Config{}, fmt.Errorf("stage worker config: %w", err)
	}
	var models []string
	for _, m := range cfg.Models {
		if m = strings.TrimSpace(m); m != "" {
			models = append(models, m)
		}
	}
	cfg.Models = models
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// ErrNoModels means the worker was given no model files: no Deps.Models,
// or no CASCADE_MODEL_DIR for ModelFiles.
var ErrNoModels = errors.New("no model files")

// ModelFiles opens the folder the configuration names (Config.ModelDir) as
// the worker's model files, as the stage-worker binary does.
func ModelFiles(cfg Config) (fs.FS, error) {
	if cfg.ModelDir == "" {
		return nil, fmt.Errorf("%w: set CASCADE_MODEL_DIR to the folder of the plan's model files (for the MNIST plan, models/mnist in the repository)", ErrNoModels)
	}
	if fi, err := os.Stat(cfg.ModelDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w: CASCADE_MODEL_DIR %q is not a folder", ErrNoModels, cfg.ModelDir)
	}
	return os.DirFS(cfg.ModelDir), nil
}

// ErrInvalidConfig marks a configuration that fails Validate.
var ErrInvalidConfig = errors.New("invalid stage worker config")

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	problems := servicemain.Problems{c.Process.Validate()}
	err := wire.CheckInboxPrefixes(c.InboxPrefixes)
	problems.If(err != nil, "CASCADE_INBOX_PREFIX: %v", err)
	seen := map[string]bool{}
	for _, m := range c.Models {
		problems.If(!wire.ValidToken(m), "CASCADE_WORKER_MODELS: %q is not a valid model name", m)
		problems.If(seen[m], "CASCADE_WORKER_MODELS lists %q twice", m)
		seen[m] = true
	}
	problems.If(c.Runners < 1 || c.Runners > 256, "CASCADE_WORKER_RUNNERS must be in [1,256], got %d", c.Runners)
	problems.If(c.Threads < 1 || c.Threads > 256, "CASCADE_WORKER_THREADS must be in [1,256], got %d", c.Threads)
	problems.If(c.Provider != onnxrt.ProviderCPU && c.Provider != onnxrt.ProviderCUDA, "CASCADE_WORKER_PROVIDER %q: want %s or %s", c.Provider, onnxrt.ProviderCPU, onnxrt.ProviderCUDA)
	// The CUDA settings are checked whatever the provider: a typo should
	// not wait for the day the provider changes.
	_, err = c.CUDA.Parse()
	problems.Add(err)
	problems.If(c.IdleWait < time.Millisecond || c.IdleWait > time.Minute, "CASCADE_WORKER_IDLE_WAIT must be in [1ms,1m], got %v", c.IdleWait)
	problems.If(c.NakDelay < 0, "CASCADE_WORKER_NAK_DELAY must be >= 0, got %v", c.NakDelay)
	problems.If(c.PublishTimeout <= 0, "CASCADE_WORKER_PUBLISH_TIMEOUT must be > 0, got %v", c.PublishTimeout)
	return problems.Err(ErrInvalidConfig)
}

// Deps are what Run needs from its process.
type Deps struct {
	// Deps are the logger, metrics registerer, NATS connection and clock
	// every service takes.
	servicemain.Deps
	// Models holds the model files: a model's bytes are the file
	// Model.File of the plan in the control bucket, resolved against it.
	// Required. The binary opens Config.ModelDir (ModelFiles); the
	// all-in-one binary hands over the plan's folder or the embedded MNIST
	// models.
	Models fs.FS

	// hooks let tests in this package interpose at fixed points.
	hooks hooks
}

// hooks are test seams; every field may be nil.
type hooks struct {
	// gearApplied is called by the watcher after it applies a gear.
	gearApplied func(st wire.GearState, latency time.Duration)
	// beforePublish is called after a batch is computed, before anything of
	// it is published.
	beforePublish func(model string, n int)
	// beforeSettle is called after a batch's publishes are acknowledged,
	// before its inputs are acked.
	beforeSettle func(model string, n int)
	// runError, if set, makes the model's run fail for an item when it
	// returns an error (tests: a model that fails on one input).
	runError func(model, id string) error
}

// MetricsAddress is where the binary serves the metrics endpoint.
func (c Config) MetricsAddress() string { return c.MetricsAddr }
