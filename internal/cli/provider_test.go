package cli

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
)

func parseProviderFlags(t *testing.T, def string, args ...string) *providerFlags {
	t.Helper()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var pf providerFlags
	pf.register(fs, def)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &pf
}

func TestProviderFlags(t *testing.T) {
	pf := parseProviderFlags(t, "cpu", "--provider", "cuda", "--cuda-device", "1", "--cuda-conv-algo", "heuristic",
		"--cuda-tf32", "false", "--cuda-pin", "true", "--cuda-mem-limit", "2GiB", "--cuda-options", "arena_extend_strategy=kSameAsRequested")
	wantEnv := map[string]string{
		"CASCADE_WORKER_PROVIDER": "cuda", "CASCADE_WORKER_CUDA_DEVICE_ID": "1", "CASCADE_WORKER_CUDA_CONV_ALGO_SEARCH": "heuristic",
		"CASCADE_WORKER_CUDA_TF32": "false", "CASCADE_WORKER_CUDA_PIN_HOST_BUFFERS": "true", "CASCADE_WORKER_CUDA_MEM_LIMIT": "2GiB",
		"CASCADE_WORKER_CUDA_OPTIONS": "arena_extend_strategy=kSameAsRequested",
	}
	if got := pf.workerEnv(); !reflect.DeepEqual(got, wantEnv) {
		t.Errorf("workerEnv = %v, want %v", got, wantEnv)
	}
	opts, err := pf.sessionOptions(3)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Provider != "cuda" || opts.IntraOpThreads != 3 || opts.CUDA.DeviceID != 1 || opts.CUDA.ConvAlgoSearch != "HEURISTIC" ||
		opts.CUDA.TF32 == nil || *opts.CUDA.TF32 || !opts.CUDA.PinHostBuffers || opts.CUDA.MemLimit != 2<<30 ||
		opts.CUDA.Extra["arena_extend_strategy"] != "kSameAsRequested" {
		t.Errorf("sessionOptions = %+v", opts)
	}

	// up's default leaves the worker's provider alone.
	if got := parseProviderFlags(t, "").workerEnv(); len(got) != 0 {
		t.Errorf("no flags: workerEnv = %v, want none", got)
	}
	// cpu sessions carry no CUDA options.
	if opts, err := parseProviderFlags(t, "cpu", "--cuda-tf32", "false").sessionOptions(1); err != nil || opts.CUDA.TF32 != nil {
		t.Errorf("cpu sessionOptions = %+v, %v", opts, err)
	}

	for _, args := range [][]string{
		{"--provider", "tpu"},
		{"--cuda-tf32", "maybe"},
		{"--cuda-conv-algo", "fastest"},
		{"--cuda-device", "-2"},
		{"--cuda-mem-limit", "lots"},
		{"--cuda-options", "enable_cuda_graph=1"},
	} {
		err := parseProviderFlags(t, "cpu", args...).check()
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%q: %v, want a usage error naming %s", args, err, args[0])
		}
	}
}

// cpuLibraryEnv is a Getenv that names the CPU library, so a test that asks
// for CUDA loads the library every other test of the process uses.
func cpuLibraryEnv(t *testing.T) func(string) string {
	t.Helper()
	lib := orttest.Library(t, onnxrt.FindLibrary)
	return func(k string) string {
		if k == onnxrt.LibraryEnv {
			return lib
		}
		return os.Getenv(k)
	}
}

// TestProviderCUDAWithoutAGPU: profile and bench on provider cuda, where
// CUDA cannot run, stop at once with the provider's one-line error.
func TestProviderCUDAWithoutAGPU(t *testing.T) {
	if os.Getenv("CASCADE_GPU") == "1" {
		t.Skip("skipping: CASCADE_GPU=1 says CUDA is usable here")
	}
	getenv := cpuLibraryEnv(t)
	for _, args := range [][]string{
		{"profile", "--out", filepath.Join(t.TempDir(), "p.json"), "--provider", "cuda", "--cuda-tf32", "false", "--hop-samples", "0", "--quiet"},
		{"bench", "--provider", "cuda", "--only", "compute", "--compute", "100ms", "--gears", "g1"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, _, err := runWithEnv(ctx, getenv, args...)
		cancel()
		if !errors.Is(err, onnxrt.ErrProviderUnavailable) {
			t.Errorf("%s: %v, want ErrProviderUnavailable", args[0], err)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error spans lines: %q", args[0], err)
		}
	}
}

// TestUpOnCUDAWithoutAGPU: `up --provider cuda` where CUDA cannot run fails
// at start, naming the provider, and never says it is up.
func TestUpOnCUDAWithoutAGPU(t *testing.T) {
	if os.Getenv("CASCADE_GPU") == "1" {
		t.Skip("skipping: CASCADE_GPU=1 says CUDA is usable here")
	}
	lib := cpuLibraryEnv(t)(onnxrt.LibraryEnv)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stdout, _, err := runWithOutputContext(ctx, "up", "--data", t.TempDir(), "--port", "-1", "--monitor-port", "0",
		"--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--provider", "cuda", "--cuda-tf32", "false",
		"--set", "ONNXRUNTIME_LIB="+lib,
		// The built-in plan was profiled on the CPU: without this the
		// worker refuses it for that reason, before it tries CUDA.
		"--set", "WORKER_ALLOW_PROVIDER_MISMATCH=true")
	if !errors.Is(err, onnxrt.ErrProviderUnavailable) || !strings.Contains(err.Error(), "provider cuda") {
		t.Fatalf("up --provider cuda = %v, want ErrProviderUnavailable naming the provider", err)
	}
	if strings.Contains(stdout, "is up") {
		t.Errorf("up said it was up:\n%s", stdout)
	}
	_, _, err = runWithOutputContext(ctx, "up", "--data", t.TempDir(), "--port", "-1", "--provider", "tpu")
	if !errors.Is(err, ErrUsage) {
		t.Errorf("up --provider tpu = %v, want a usage error", err)
	}
}
