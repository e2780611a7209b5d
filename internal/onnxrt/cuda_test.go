package onnxrt

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// gpuEnv, when "1", says the machine has a GPU and CASCADE_ONNXRUNTIME_LIB
// names the CUDA library set: the CUDA tests then run and must pass. Without
// it they skip (scripts/gpu-check.sh sets it).
const gpuEnv = "CASCADE_GPU"

func requireGPU(t *testing.T) {
	t.Helper()
	if os.Getenv(gpuEnv) != "1" {
		t.Skipf("skipping: %s=1 is not set (needs a GPU and the CUDA library set; scripts/gpu-check.sh runs it)", gpuEnv)
	}
}

func ptr[T any](v T) *T { return &v }

func TestCUDAOptionsProviderOptions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts CUDAOptions
		want map[string]string
	}{
		{"zero value: device 0, ORT defaults", CUDAOptions{}, map[string]string{"device_id": "0"}},
		{"everything", CUDAOptions{
			DeviceID: 1, ConvAlgoSearch: ConvAlgoHeuristic, TF32: ptr(false), MaxWorkspace: ptr(true),
			MemLimit: 8 << 30, PreferNHWC: ptr(true), PinHostBuffers: true,
			Extra: map[string]string{"arena_extend_strategy": "kSameAsRequested"},
		}, map[string]string{
			"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0",
			"cudnn_conv_use_max_workspace": "1", "gpu_mem_limit": "8589934592", "prefer_nhwc": "1",
			"arena_extend_strategy": "kSameAsRequested",
		}},
		{"tf32 on", CUDAOptions{TF32: ptr(true)}, map[string]string{"device_id": "0", "use_tf32": "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.opts.ProviderOptions()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ProviderOptions() = %v, want %v", got, tt.want)
			}
		})
	}

	bad := []struct {
		name string
		opts CUDAOptions
		want []string
	}{
		{"negative device", CUDAOptions{DeviceID: -1}, []string{"device id -1"}},
		{"unknown search", CUDAOptions{ConvAlgoSearch: "FAST"}, []string{`"FAST"`}},
		{"negative limit", CUDAOptions{MemLimit: -5}, []string{"memory limit -5"}},
		{"cuda graph", CUDAOptions{Extra: map[string]string{"enable_cuda_graph": "1"}}, []string{"enable_cuda_graph", "stale"}},
		{"stream pointer", CUDAOptions{Extra: map[string]string{"user_compute_stream": "12345"}}, []string{"user_compute_stream"}},
		{"typed key in extra", CUDAOptions{Extra: map[string]string{"use_tf32": "0"}}, []string{"use_tf32", "set TF32"}},
		{"bad key", CUDAOptions{Extra: map[string]string{"Bad Key": "1"}}, []string{`"Bad Key"`}},
		{"bad value", CUDAOptions{Extra: map[string]string{"arena_extend_strategy": "a,b"}}, []string{"arena_extend_strategy"}},
		{"every problem at once", CUDAOptions{DeviceID: -1, ConvAlgoSearch: "x", MemLimit: -1}, []string{"device id", `"x"`, "memory limit"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.opts.ProviderOptions()
			if !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("ProviderOptions() = %v, want ErrInvalidOptions", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			// Open refuses them too, before touching the provider.
			if _, err := (SessionOptions{Provider: ProviderCUDA, CUDA: tt.opts}).normalized(); !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("normalized() = %v, want ErrInvalidOptions", err)
			}
		})
	}
}

func TestCUDASettingsParse(t *testing.T) {
	t.Parallel()
	got, err := CUDASettings{
		DeviceID: "2", ConvAlgoSearch: "heuristic", TF32: "off", MaxWorkspace: "1", PreferNHWC: "yes",
		PinHostBuffers: "true", MemLimit: "4GiB", Options: "arena_extend_strategy=kSameAsRequested, tunable_op_enable=1",
	}.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := CUDAOptions{
		DeviceID: 2, ConvAlgoSearch: ConvAlgoHeuristic, TF32: ptr(false), MaxWorkspace: ptr(true), PreferNHWC: ptr(true),
		PinHostBuffers: true, MemLimit: 4 << 30,
		Extra: map[string]string{"arena_extend_strategy": "kSameAsRequested", "tunable_op_enable": "1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse = %+v, want %+v", got, want)
	}
	if got, err := (CUDASettings{}).Parse(nil); err != nil || !reflect.DeepEqual(got, CUDAOptions{}) {
		t.Fatalf("empty settings: %+v, %v; want the zero CUDAOptions", got, err)
	}

	env := func(f string) string { return "CASCADE_WORKER_CUDA_" + strings.ToUpper(f) }
	_, err = CUDASettings{
		DeviceID: "-1", ConvAlgoSearch: "fastest", TF32: "maybe", MemLimit: "lots", Options: "novalue",
	}.Parse(env)
	if !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("Parse(bad) = %v, want ErrInvalidOptions", err)
	}
	for _, w := range []string{"CASCADE_WORKER_CUDA_DEVICEID", "CASCADE_WORKER_CUDA_CONVALGOSEARCH", "CASCADE_WORKER_CUDA_TF32",
		"CASCADE_WORKER_CUDA_MEMLIMIT", "CASCADE_WORKER_CUDA_OPTIONS"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %s", err, w)
		}
	}
	if _, err := (CUDASettings{Options: "enable_cuda_graph=1"}).Parse(nil); !errors.Is(err, ErrInvalidOptions) ||
		!strings.Contains(err.Error(), "enable_cuda_graph") {
		t.Errorf("Parse(enable_cuda_graph) = %v, want it refused", err)
	}
	if _, err := (CUDASettings{Options: "a=1,a=2"}).Parse(nil); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("Parse(duplicate option) = %v, want ErrInvalidOptions", err)
	}
}

func TestParseBytes(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"0": 0, "123": 123, "123B": 123, "2KB": 2000, "512MiB": 512 << 20, "8GiB": 8 << 30, "2 GB": 2e9, "1kib": 1024,
	} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5GB", "GB", "3TB", "99999999999GiB"} {
		if got, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) = %d, want an error", in, got)
		}
	}
}

func TestIsOptionError(t *testing.T) {
	t.Parallel()
	for msg, want := range map[string]bool{
		`Unknown provider option: "no_such_option".`:                                    true,
		`Failed to parse provider option "use_tf32": maybe`:                             true,
		"Invalid device ID: 99, must be between 0 (inclusive) and 1 (exclusive).":       false,
		"CUDA failure 100: no CUDA-capable device is detected":                          false,
		"Failed to load library libonnxruntime_providers_cuda.so with error: x: cannot": false,
	} {
		if got := isOptionError(errors.New(msg)); got != want {
			t.Errorf("isOptionError(%q) = %v, want %v", msg, got, want)
		}
	}
}

func TestCUDAHint(t *testing.T) {
	t.Parallel()
	for msg, want := range map[string]string{
		"Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file":                                        "libcublasLt.so.13 is missing",
		"Failed to load library /x/libonnxruntime_providers_shared.so with error: /x/libonnxruntime_providers_shared.so: cannot open shared object file: No such file": "--cuda and point",
		"OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared library":                                                                                 "--cuda",
		"CUDA failure 100: no CUDA-capable device is detected ; GPU=0":                                                                                                 "nvidia-smi",
		"CUDA failure 101: invalid device ordinal":                                                                                                                     "device id",
		"Invalid device ID: 99, must be between 0 (inclusive) and 1 (exclusive).":                                                                                      "device id",
		"CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version":                                                                                "driver",
		"something else": "no CUDA support",
	} {
		if got := cudaHint(msg); !strings.Contains(got, want) {
			t.Errorf("cudaHint(%q) = %q, want it to mention %q", msg, got, want)
		}
	}
}

func TestFindLibraryForCUDA(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	installed := filepath.Join(root, cachedCUDALibrary)
	if err := os.MkdirAll(filepath.Dir(installed), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(installed, []byte("not really a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	none := func(string) string { return "" }
	got, err := findLibrary(none, filepath.Join(root), "", cachedCUDALibrary, ErrCUDALibraryNotFound)
	if err != nil || got != installed {
		t.Fatalf("findLibrary(cuda) = %q, %v; want %q", got, err, installed)
	}
	elsewhere := t.TempDir()
	_, err = findLibrary(none, elsewhere, filepath.Join(elsewhere, "cascadeserve"), cachedCUDALibrary, ErrCUDALibraryNotFound)
	if !errors.Is(err, ErrCUDALibraryNotFound) || !errors.Is(err, ErrLibraryNotFound) ||
		!strings.Contains(err.Error(), "install-onnxruntime.sh --cuda") {
		t.Fatalf("findLibrary(cuda, not installed) = %v, want ErrCUDALibraryNotFound (an ErrLibraryNotFound) naming --cuda", err)
	}
	// The override wins for every provider.
	lib := filepath.Join(elsewhere, "lib.so")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	override := func(k string) string {
		if k == LibraryEnv {
			return lib
		}
		return ""
	}
	if got, err := FindLibraryFor(ProviderCUDA, override); err != nil || got != lib {
		t.Fatalf("FindLibraryFor(cuda) with %s = %q, %v; want %q", LibraryEnv, got, err, lib)
	}
}

// TestCUDAUnavailable: with a library that has no usable CUDA provider (the
// CPU library CI installs, or no GPU), asking for CUDA is one clear error
// at Open, with or without options.
func TestCUDAUnavailable(t *testing.T) {
	t.Parallel()
	if os.Getenv(gpuEnv) == "1" {
		t.Skipf("skipping: %s=1 says CUDA is usable here", gpuEnv)
	}
	rt := newRuntime(t)
	data, err := os.ReadFile(filepath.Join("testdata", "linear_logits.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range []CUDAOptions{{}, {TF32: ptr(false), ConvAlgoSearch: ConvAlgoHeuristic, PinHostBuffers: true}} {
		s, err := rt.Open("linear_logits", data, SessionOptions{Provider: ProviderCUDA, CUDA: opts})
		if err == nil {
			_ = s.Close()
			t.Skip("skipping: this library and machine run CUDA (set CASCADE_GPU=1 to run the CUDA tests)")
		}
		if !errors.Is(err, ErrProviderUnavailable) {
			t.Fatalf("Open(cuda, %+v) = %v, want ErrProviderUnavailable", opts, err)
		}
		msg := err.Error()
		hinted := strings.Contains(msg, "install-onnxruntime.sh") || strings.Contains(msg, "nvidia-smi") || strings.Contains(msg, "driver")
		if strings.Contains(msg, "\n") || !hinted {
			t.Fatalf("error %q should be one line saying what to do", msg)
		}
		t.Logf("%v", err)
	}
}

// runItems runs n random items through s, as float32 values in [0, 3) or,
// for a uint8 model, as bytes, and returns the probabilities and the items
// as the model saw them (for the hand-computed reference).
func runItems(s *Session, rng *rand.Rand, n, features, classes int) (got, ref []float32, err error) {
	dst := make([]float32, n*classes)
	if s.Info().InputType == InputUINT8 {
		u := make([]uint8, n*features)
		ref = make([]float32, len(u))
		for i := range u {
			u[i] = uint8(rng.IntN(4))
			ref[i] = float32(u[i])
		}
		got, err = s.RunUint8(u, n, dst)
		return got, ref, err
	}
	ref = randomItems(rng, n, features, 0, 3)
	got, err = s.Run(ref, n, dst)
	return got, ref, err
}

// fakePinner counts pins and unpins and can be told to fail.
type fakePinner struct {
	mu     sync.Mutex
	pinned map[*byte]int
	pins   int
	fail   bool
}

func (p *fakePinner) pin(b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail {
		return errors.New("out of pinnable memory")
	}
	if p.pinned == nil {
		p.pinned = map[*byte]int{}
	}
	p.pinned[&b[0]] = len(b)
	p.pins++
	return nil
}

func (p *fakePinner) unpin(b []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.pinned[&b[0]]; !ok {
		return errors.New("unpin of memory that is not pinned")
	}
	delete(p.pinned, &b[0])
	return nil
}

func (p *fakePinner) live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pinned)
}

// TestPinnedHostBuffers runs sessions whose buffers are mapped outside the
// Go heap and "pinned" (a fake pinner on the CPU provider): results stay
// right across growth and cache drops, every pin is undone by Close, and a
// pin failure fails Open.
func TestPinnedHostBuffers(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	lin := loadLinear(t)
	for _, file := range []string{"linear_logits", "linear_uint8"} {
		t.Run(file, func(t *testing.T) {
			t.Parallel()
			p := &fakePinner{}
			s, err := rt.OpenFile(filepath.Join("testdata", file+".onnx"), SessionOptions{pinner: p})
			if err != nil {
				t.Fatal(err)
			}
			if p.live() != 2 {
				t.Fatalf("after Open %d buffers pinned, want 2 (input and output, pinned at Open)", p.live())
			}
			rng := rand.New(rand.NewPCG(9, uint64(len(file))))
			// Two goroutines on one session: runs serialize.
			for _, err := range concurrently(2, func(g int) error {
				rng := rand.New(rand.NewPCG(uint64(g), 11))
				for _, n := range []int{1, 3, 17, 2, 40, 1, 64} {
					if _, _, err := runItems(s, rng, n, lin.features(), lin.Classes); err != nil {
						return err
					}
				}
				return nil
			}) {
				t.Fatal(err)
			}
			for _, n := range []int{5, 100, 7} {
				got, ref, err := runItems(s, rng, n, lin.features(), lin.Classes)
				if err != nil {
					t.Fatal(err)
				}
				assertClose(t, got, lin.probabilities(ref, n), 1e-5)
			}
			if p.live() != 2 || p.pins <= 2 {
				t.Fatalf("%d pinned buffers live after %d pins, want 2 live after growth", p.live(), p.pins)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if p.live() != 0 {
				t.Fatalf("%d buffers still pinned after Close", p.live())
			}
		})
	}
	t.Run("pin failure fails Open", func(t *testing.T) {
		t.Parallel()
		_, err := rt.OpenFile(filepath.Join("testdata", "linear_logits.onnx"), SessionOptions{pinner: &fakePinner{fail: true}})
		if !errors.Is(err, ErrProviderUnavailable) || !strings.Contains(err.Error(), "out of pinnable memory") {
			t.Fatalf("Open with a failing pinner = %v, want ErrProviderUnavailable with the cause", err)
		}
	})
}

// TestCUDA runs the linear models on the GPU with several provider options
// and checks them against hand-computed probabilities. It needs
// CASCADE_GPU=1 and the CUDA library set (CASCADE_ONNXRUNTIME_LIB).
func TestCUDA(t *testing.T) {
	requireGPU(t)
	rt := newRuntime(t)
	lin := loadLinear(t)
	t.Logf("onnxruntime %s from %s", rt.Version(), rt.LibraryPath())
	cases := []struct {
		name string
		opts CUDAOptions
		tol  float64
	}{
		{"defaults", CUDAOptions{}, 2e-3}, // TF32 is on by default
		{"tf32 off, heuristic search", CUDAOptions{TF32: ptr(false), ConvAlgoSearch: ConvAlgoHeuristic}, 1e-5},
		{"pinned host buffers, tf32 off", CUDAOptions{TF32: ptr(false), PinHostBuffers: true}, 1e-5},
		{"memory limit, max workspace off, exhaustive", CUDAOptions{TF32: ptr(false), MemLimit: 1 << 30,
			MaxWorkspace: ptr(false), ConvAlgoSearch: ConvAlgoExhaustive}, 1e-5},
		{"extra option", CUDAOptions{TF32: ptr(false), Extra: map[string]string{"arena_extend_strategy": "kSameAsRequested"}}, 1e-5},
	}
	for _, file := range []string{"linear_logits", "linear_uint8"} {
		for _, tc := range cases {
			t.Run(file+"/"+tc.name, func(t *testing.T) {
				s := openTestModel(t, rt, file, SessionOptions{Provider: ProviderCUDA, CUDA: tc.opts})
				rng := rand.New(rand.NewPCG(3, 4))
				for _, n := range []int{1, 4, 4, 2, 33, 128, 1} {
					got, ref, err := runItems(s, rng, n, lin.features(), lin.Classes)
					if err != nil {
						t.Fatalf("Run(cuda, n=%d): %v", n, err)
					}
					assertClose(t, got, lin.probabilities(ref, n), tc.tol)
				}
			})
		}
	}
	t.Run("concurrent sessions", func(t *testing.T) {
		sessions := make([]*Session, 4)
		for g := range sessions {
			sessions[g] = openTestModel(t, rt, "linear_logits", SessionOptions{Provider: ProviderCUDA, CUDA: CUDAOptions{TF32: ptr(false), PinHostBuffers: g%2 == 0}})
		}
		for _, err := range concurrently(len(sessions), func(g int) error {
			rng := rand.New(rand.NewPCG(uint64(g), 5))
			for i := range 50 {
				n := 1 + (i*7+g)%32
				x := randomItems(rng, n, lin.features(), -1, 1)
				if _, err := sessions[g].Run(x, n, make([]float32, n*lin.Classes)); err != nil {
					return err
				}
			}
			return nil
		}) {
			t.Error(err)
		}
	})
	data, err := os.ReadFile(filepath.Join("testdata", "linear_logits.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("no such device", func(t *testing.T) {
		s, err := rt.Open("linear_logits", data, SessionOptions{Provider: ProviderCUDA, CUDA: CUDAOptions{DeviceID: 99}})
		if err == nil {
			_ = s.Close()
			t.Fatal("Open(cuda, device 99) succeeded")
		}
		if !errors.Is(err, ErrProviderUnavailable) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("Open(cuda, device 99) = %v, want one-line ErrProviderUnavailable", err)
		}
		t.Logf("device 99: %v", err)
	})
	t.Run("unknown provider option", func(t *testing.T) {
		s, err := rt.Open("linear_logits", data, SessionOptions{Provider: ProviderCUDA, CUDA: CUDAOptions{Extra: map[string]string{"no_such_option": "1"}}})
		if err == nil {
			_ = s.Close()
			t.Fatal("Open(cuda, no_such_option) succeeded")
		}
		if !errors.Is(err, ErrInvalidOptions) {
			t.Fatalf("Open(cuda, no_such_option) = %v, want ErrInvalidOptions", err)
		}
	})
}
