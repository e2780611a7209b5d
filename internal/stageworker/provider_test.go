package stageworker

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// profiledFor records a provider in every model's profile.
func profiledFor(provider string) planOption {
	return func(p *plan.Plan) {
		for i := range p.Models {
			p.Models[i].Profile.Provider = provider
		}
	}
}

// startErr waits for a worker that must fail at start and returns its error.
func (tw *testWorker) startErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-tw.done:
		tw.cancel()
		tw.cancel = nil
		if err == nil {
			t.Fatal("Run returned nil, want a start error")
		}
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("the worker did not fail within 60s")
		return nil
	}
}

func TestWorkerRefusesAPlanProfiledForAnotherProvider(t *testing.T) {
	g := gear("g1", 100, 8, 1, "linear", 0.9, "mlp")
	e := startEnv(t, testPlan(t, []plan.Gear{g}, profiledFor("cuda")))
	e.setGear(t, g.ID)

	err := e.startWorker(t, nil, hooks{}).startErr(t)
	for _, want := range []string{`linear (cuda)`, `this worker's "cpu"`, "CASCADE_WORKER_ALLOW_PROVIDER_MISMATCH=true", "--provider cpu"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	// Told to, it serves them.
	w := e.startWorker(t, func(c *Config) { c.AllowProviderMismatch = true }, hooks{})
	natstest.WaitFor(t, "worker ready", 60*time.Second, func() bool { return w.counter("cascade_worker_ready") == 1 })
}

func TestWorkerServesPlansOfItsProviderAndUnrecordedOnes(t *testing.T) {
	for _, provider := range []string{"cpu", ""} {
		t.Run("profile provider "+provider, func(t *testing.T) {
			g := gear("g1", 100, 8, 1, "linear", 0.9, "mlp")
			e := startEnv(t, testPlan(t, []plan.Gear{g}, profiledFor(provider)))
			e.setGear(t, g.ID)
			w := e.startWorker(t, nil, hooks{})
			natstest.WaitFor(t, "worker ready", 60*time.Second, func() bool { return w.counter("cascade_worker_ready") == 1 })
		})
	}
}

// TestWorkerOnCUDAWithoutAGPU: where CUDA cannot run (no CUDA library set
// or no GPU), a worker on provider cuda fails at start with one error.
func TestWorkerOnCUDAWithoutAGPU(t *testing.T) {
	if os.Getenv("CASCADE_GPU") == "1" {
		t.Skip("skipping: CASCADE_GPU=1 says CUDA is usable here")
	}
	g := gear("g1", 100, 8, 1, "linear", 0.9, "mlp")
	e := startEnv(t, testPlan(t, []plan.Gear{g}))
	e.setGear(t, g.ID)
	err := e.startWorker(t, func(c *Config) {
		c.Provider = onnxrt.ProviderCUDA
		c.CUDA.TF32 = "false"
	}, hooks{}).startErr(t)
	if !errors.Is(err, onnxrt.ErrProviderUnavailable) {
		t.Fatalf("Run = %v, want ErrProviderUnavailable", err)
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "provider cuda") {
		t.Fatalf("error %q: want one line naming the provider", msg)
	}
}

func TestCUDAConfig(t *testing.T) {
	cfg, err := ConfigFromEnv(map[string]string{
		"CASCADE_WORKER_PROVIDER": "cuda", "CASCADE_WORKER_CUDA_DEVICE_ID": "1", "CASCADE_WORKER_CUDA_CONV_ALGO_SEARCH": "heuristic",
		"CASCADE_WORKER_CUDA_TF32": "false", "CASCADE_WORKER_CUDA_MAX_WORKSPACE": "true", "CASCADE_WORKER_CUDA_MEM_LIMIT": "8GiB",
		"CASCADE_WORKER_CUDA_PREFER_NHWC": "1", "CASCADE_WORKER_CUDA_PIN_HOST_BUFFERS": "true",
		"CASCADE_WORKER_CUDA_OPTIONS": "arena_extend_strategy=kSameAsRequested", "CASCADE_WORKER_ALLOW_PROVIDER_MISMATCH": "true",
	})
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cfg.SessionOptions()
	if err != nil {
		t.Fatal(err)
	}
	m, err := opts.CUDA.ProviderOptions()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0",
		"cudnn_conv_use_max_workspace": "1", "gpu_mem_limit": "8589934592", "prefer_nhwc": "1",
		"arena_extend_strategy": "kSameAsRequested"}
	if len(m) != len(want) || !opts.CUDA.PinHostBuffers || opts.Provider != "cuda" || !cfg.AllowProviderMismatch {
		t.Fatalf("options %v (pinned %v, provider %q, allow mismatch %v), want %v", m, opts.CUDA.PinHostBuffers, opts.Provider, cfg.AllowProviderMismatch, want)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}

	// Bad CUDA settings are reported with the rest, by variable, whatever the provider.
	_, err = ConfigFromEnv(map[string]string{
		"CASCADE_WORKER_CUDA_DEVICE_ID": "gpu0", "CASCADE_WORKER_CUDA_CONV_ALGO_SEARCH": "fast",
		"CASCADE_WORKER_CUDA_OPTIONS": "enable_cuda_graph=1", "CASCADE_WORKER_RUNNERS": "0",
	})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"CASCADE_WORKER_CUDA_DEVICE_ID", "CASCADE_WORKER_CUDA_CONV_ALGO_SEARCH", "CASCADE_WORKER_RUNNERS"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not report %s:\n%v", want, err)
		}
	}
	_, err = ConfigFromEnv(map[string]string{"CASCADE_WORKER_CUDA_OPTIONS": "enable_cuda_graph=1"})
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "enable_cuda_graph") {
		t.Fatalf("err = %v, want enable_cuda_graph refused", err)
	}

	// With the CPU provider, sessions get no CUDA options.
	cfg, err = ConfigFromEnv(map[string]string{"CASCADE_WORKER_CUDA_TF32": "false"})
	if err != nil {
		t.Fatal(err)
	}
	if opts, err := cfg.SessionOptions(); err != nil || opts.CUDA.TF32 != nil || opts.Provider != "cpu" {
		t.Fatalf("cpu SessionOptions = %+v, %v", opts, err)
	}
}
