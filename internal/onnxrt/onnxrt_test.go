package onnxrt

import (
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
)

func TestRunMatchesHandComputed(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	lin := loadLinear(t)

	softmaxOf := func(z [][]float64) [][]float64 {
		out := make([][]float64, len(z))
		for i, row := range z {
			out[i] = refSoftmax(row)
		}
		return out
	}
	identity := func(z [][]float64) [][]float64 { return z }
	twice := func(z [][]float64) [][]float64 { return softmaxOf(softmaxOf(z)) }

	tests := []struct {
		name     string
		file     string
		opts     SessionOptions
		wantKind string
		// expect maps the hand-computed logits to the expected Run output.
		expect func([][]float64) [][]float64
		// lo, hi bound the random input values.
		lo, hi float64
	}{
		{"logits auto", "linear_logits", SessionOptions{}, OutputAuto, softmaxOf, -1, 1},
		{"probabilities auto", "linear_probs", SessionOptions{}, OutputAuto, softmaxOf, -1, 1},
		{"logits forced", "linear_logits", SessionOptions{OutputKind: OutputLogits}, OutputLogits, softmaxOf, -1, 1},
		{"logits taken as probabilities", "linear_logits", SessionOptions{OutputKind: OutputProbabilities}, OutputProbabilities, identity, -1, 1},
		{"probabilities taken as logits", "linear_probs", SessionOptions{OutputKind: OutputLogits}, OutputLogits, twice, -1, 1},
		{"metadata beats heuristic", "linear_probs_meta_logits", SessionOptions{}, OutputLogits, twice, -1, 1},
		{"option beats metadata", "linear_probs_meta_logits", SessionOptions{OutputKind: OutputProbabilities}, OutputProbabilities, softmaxOf, -1, 1},
		{"two intra-op threads", "linear_logits", SessionOptions{IntraOpThreads: 2}, OutputAuto, softmaxOf, -1, 1},
		{"uint8 input", "linear_uint8", SessionOptions{}, OutputAuto, softmaxOf, -2, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := openTestModel(t, rt, tt.file, tt.opts)
			if got := s.Info().OutputKind; got != tt.wantKind {
				t.Errorf("OutputKind = %q, want %q", got, tt.wantKind)
			}
			rng := rand.New(rand.NewPCG(1, uint64(len(tt.name))))
			f := lin.features()
			// One session, reused across batch sizes, growing and shrinking,
			// with fresh inputs every call so stale buffers would show.
			for _, n := range []int{1, 3, 8, 3, 1, 8, 2} {
				x := randomItems(rng, n, f, tt.lo, tt.hi)
				ref := x
				var bytes []uint8
				if s.Info().InputType == InputUINT8 {
					// A uint8 model takes bytes as they are.
					ref, bytes = make([]float32, len(x)), make([]uint8, len(x))
					for i, v := range x {
						bytes[i] = uint8(math.Max(0, math.Round(float64(v))))
						ref[i] = float32(bytes[i])
					}
				}
				const guard = -7
				dst := make([]float32, n*lin.Classes+2)
				for i := range dst {
					dst[i] = guard
				}
				var got []float32
				var err error
				if bytes != nil {
					got, err = s.RunUint8(bytes, n, dst)
				} else {
					got, err = s.Run(x, n, dst)
				}
				if err != nil {
					t.Fatalf("Run(n=%d): %v", n, err)
				}
				if &got[0] != &dst[0] {
					t.Fatalf("Run(n=%d) did not return a prefix of dst", n)
				}
				if dst[n*lin.Classes] != guard || dst[n*lin.Classes+1] != guard {
					t.Fatalf("Run(n=%d) wrote past n*NumClasses: %v", n, dst[n*lin.Classes:])
				}
				assertClose(t, got, tt.expect(lin.logits(ref, n)), 1e-5)
			}
		})
	}
}

func TestInfo(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	tests := []struct {
		file string
		want ModelInfo
	}{
		{"linear_logits", ModelInfo{Name: "linear_logits", InputName: "x", OutputName: "logits",
			ItemShape: []int64{2, 3}, NumClasses: 3, InputType: InputFP32, OutputKind: OutputAuto}},
		{"linear_probs", ModelInfo{Name: "linear_probs", InputName: "x", OutputName: "probs",
			ItemShape: []int64{2, 3}, NumClasses: 3, InputType: InputFP32, OutputKind: OutputAuto}},
		{"linear_uint8", ModelInfo{Name: "linear_uint8", InputName: "x", OutputName: "logits",
			ItemShape: []int64{2, 3}, NumClasses: 3, InputType: InputUINT8, OutputKind: OutputAuto}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			s := openTestModel(t, rt, tt.file, SessionOptions{})
			got := s.Info()
			if got.Name != tt.want.Name || got.InputName != tt.want.InputName ||
				got.OutputName != tt.want.OutputName || got.NumClasses != tt.want.NumClasses ||
				got.InputType != tt.want.InputType || got.OutputKind != tt.want.OutputKind ||
				!equalShape(got.ItemShape, tt.want.ItemShape) {
				t.Fatalf("Info() = %+v, want %+v", got, tt.want)
			}
			if got.ItemSize() != 6 {
				t.Errorf("ItemSize() = %d, want 6", got.ItemSize())
			}
			got.ItemShape[0] = 99 // Info returns a copy.
			if s.Info().ItemShape[0] != 2 {
				t.Errorf("mutating Info().ItemShape changed the session")
			}
		})
	}
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOpenRejectsUnsupportedModels(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	tests := []struct {
		file string
		want string // substring of the error besides the model name
	}{
		{"rank1_input", "rank 1"},
		{"int64_input", "element type INT64"},
		{"static_batch", "static batch axis"},
		{"two_outputs", "2 outputs"},
		{"rank3_output", "shape [-1 1 3]"},
		{"corrupt_random", "cannot load"},
		{"corrupt_truncated", "cannot load"},
		{"bad_metadata", `cascadeserve.output_kind="maybe"`},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			s, err := rt.OpenFile(filepath.Join("testdata", tt.file+".onnx"), SessionOptions{})
			if err == nil {
				_ = s.Close()
				t.Fatalf("OpenFile(%s) succeeded, want ErrUnsupportedModel", tt.file)
			}
			if !errors.Is(err, ErrUnsupportedModel) {
				t.Fatalf("OpenFile(%s) = %v, want ErrUnsupportedModel", tt.file, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, `"`+tt.file+`"`) || !strings.Contains(msg, tt.want) {
				t.Fatalf("error %q should name the model %q and contain %q", msg, tt.file, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Fatalf("error spans lines: %q", msg)
			}
		})
	}
	t.Run("empty bytes", func(t *testing.T) {
		t.Parallel()
		if _, err := rt.Open("empty", nil, SessionOptions{}); !errors.Is(err, ErrUnsupportedModel) {
			t.Fatalf("Open(nil) = %v, want ErrUnsupportedModel", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		_, err := rt.OpenFile(filepath.Join("testdata", "missing.onnx"), SessionOptions{})
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("OpenFile(missing) = %v, want os.ErrNotExist", err)
		}
	})
}

func TestRunRejectsBadArguments(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	s := openTestModel(t, rt, "linear_logits", SessionOptions{})
	f, c := s.Info().ItemSize(), s.Info().NumClasses
	tests := []struct {
		name  string
		input []float32
		n     int
		dst   []float32
	}{
		{"zero items", nil, 0, make([]float32, c)},
		{"negative items", make([]float32, f), -1, make([]float32, c)},
		{"input too short", make([]float32, 2*f-1), 2, make([]float32, 2*c)},
		{"input too long", make([]float32, 2*f+1), 2, make([]float32, 2*c)},
		{"dst too small", make([]float32, 2*f), 2, make([]float32, 2*c-1)},
		{"dst nil", make([]float32, f), 1, nil},
		{"batch overflows", make([]float32, f), math.MaxInt, make([]float32, c)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Run(tt.input, tt.n, tt.dst); !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("Run = %v, want ErrInvalidInput", err)
			}
		})
	}
	// The session still works after rejected calls.
	if _, err := s.Run(make([]float32, f), 1, make([]float32, c)); err != nil {
		t.Fatalf("Run after bad calls: %v", err)
	}
}

func TestRunRejectsNonFiniteOutput(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	s := openTestModel(t, rt, "linear_logits", SessionOptions{})
	x := make([]float32, 2*s.Info().ItemSize())
	x[s.Info().ItemSize()] = float32(math.NaN()) // second item only
	_, err := s.Run(x, 2, make([]float32, 2*s.Info().NumClasses))
	if !errors.Is(err, ErrInvalidOutput) || !strings.Contains(err.Error(), "item 1") {
		t.Fatalf("Run(NaN input) = %v, want ErrInvalidOutput for item 1", err)
	}
}

func TestInvalidOptions(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	data, err := os.ReadFile(filepath.Join("testdata", "linear_logits.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts SessionOptions
	}{
		{"unknown provider", SessionOptions{Provider: "tpu"}},
		{"unknown output kind", SessionOptions{OutputKind: "scores"}},
		{"negative threads", SessionOptions{IntraOpThreads: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := rt.Open("linear_logits", data, tt.opts); !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("Open(%+v) = %v, want ErrInvalidOptions", tt.opts, err)
			}
		})
	}
}

// TestConcurrentSessions runs sessions of one Runtime from several goroutines:
// one session per goroutine, plus one session shared by two goroutines (whose
// calls serialize). Meant for -race.
func TestConcurrentSessions(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	lin := loadLinear(t)
	shared := openTestModel(t, rt, "linear_logits", SessionOptions{})

	const workers, iterations = 4, 30
	work := func(id int, s *Session) error {
		rng := rand.New(rand.NewPCG(uint64(id), 7))
		dst := make([]float32, 16*lin.Classes)
		for i := range iterations {
			n := 1 + (i*7+id)%16
			x := randomItems(rng, n, lin.features(), -1, 1)
			got, err := s.Run(x, n, dst)
			if err != nil {
				return err
			}
			for j, p := range lin.probabilities(x, n) {
				for k := range p {
					if math.Abs(float64(got[j*lin.Classes+k])-p[k]) > 1e-5 {
						return errors.New("worker result differs from hand-computed probabilities")
					}
				}
			}
		}
		return nil
	}
	// A session each for workers 0..workers-1; workers 100 and 101 share
	// one.
	ids, sessions := []int{100, 101}, []*Session{shared, shared}
	for id := range workers {
		ids, sessions = append(ids, id), append(sessions, openTestModel(t, rt, "linear_logits", SessionOptions{}))
	}
	for _, err := range concurrently(len(ids), func(g int) error { return work(ids[g], sessions[g]) }) {
		t.Error(err)
	}
}

// TestManyBatchSizes walks more distinct batch sizes than the session caches,
// so buffers grow and the cache is dropped and rebuilt.
func TestManyBatchSizes(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	lin := loadLinear(t)
	s := openTestModel(t, rt, "linear_logits", SessionOptions{})
	rng := rand.New(rand.NewPCG(5, 6))
	for n := 1; n <= maxCachedBatchSizes+20; n += 1 + n/64 {
		x := randomItems(rng, n, lin.features(), -1, 1)
		got, err := s.Run(x, n, make([]float32, n*lin.Classes))
		if err != nil {
			t.Fatalf("Run(n=%d): %v", n, err)
		}
		assertClose(t, got, lin.probabilities(x, n), 1e-5)
	}
}

// TestWarmRunDoesNotAllocate is not parallel: AllocsPerRun forbids it.
func TestWarmRunDoesNotAllocate(t *testing.T) {
	rt := newRuntime(t)
	for _, file := range []string{"linear_logits", "linear_uint8"} {
		s := openTestModel(t, rt, file, SessionOptions{})
		n := 8
		x := make([]float32, n*s.Info().ItemSize())
		u := make([]uint8, n*s.Info().ItemSize())
		dst := make([]float32, n*s.Info().NumClasses)
		uint8Model := s.Info().InputType == InputUINT8
		run := func() error {
			if uint8Model {
				_, err := s.RunUint8(u, n, dst)
				return err
			}
			_, err := s.Run(x, n, dst)
			return err
		}
		if err := run(); err != nil { // warm up batch size 8
			t.Fatal(err)
		}
		allocs := testing.AllocsPerRun(50, func() {
			if err := run(); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: warm Run allocates %.1f times per call, want 0", file, allocs)
		}
	}
}

// TestRuntimeLifecycle checks the reference-counted environment. It is not
// parallel: it asserts the process-wide reference count.
func TestRuntimeLifecycle(t *testing.T) {
	lib := orttest.Library(t, FindLibrary)
	refs := func() int {
		environment.mu.Lock()
		defer environment.mu.Unlock()
		return environment.refs
	}
	if r := refs(); r != 0 {
		t.Fatalf("environment refs = %d before the test, want 0", r)
	}

	a, err := NewRuntime(lib)
	if err != nil {
		t.Fatal(err)
	}
	// A symlink to the same library is the same library.
	link := filepath.Join(t.TempDir(), "libonnxruntime.so")
	if err := os.Symlink(lib, link); err != nil {
		t.Fatal(err)
	}
	b, err := NewRuntime(link)
	if err != nil {
		t.Fatalf("NewRuntime(symlink) while another Runtime is open: %v", err)
	}
	if r := refs(); r != 2 {
		t.Fatalf("refs = %d with two Runtimes, want 2", r)
	}
	if v := a.Version(); v != ORTVersion && v != CUDAORTVersion {
		t.Errorf("Version() = %q, want %q (or %q, the CUDA library set's)", v, ORTVersion, CUDAORTVersion)
	}

	// A different library file cannot join the environment.
	other := filepath.Join(t.TempDir(), "libonnxruntime.so.1")
	copyFile(t, lib, other)
	if c, err := NewRuntime(other); err == nil {
		_ = c.Close()
		t.Fatalf("NewRuntime(%s) succeeded while %s is loaded", other, lib)
	}

	sa := openTestModel(t, a, "linear_logits", SessionOptions{})
	sb := openTestModel(t, b, "linear_logits", SessionOptions{})
	x := make([]float32, sa.Info().ItemSize())
	dst := make([]float32, sa.Info().NumClasses)

	// Closing a closes its sessions but leaves b working.
	if err := a.Close(); err != nil {
		t.Fatalf("a.Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second a.Close: %v", err)
	}
	if _, err := sa.Run(x, 1, dst); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run on a session of a closed Runtime = %v, want ErrClosed", err)
	}
	if _, err := a.OpenFile(filepath.Join("testdata", "linear_logits.onnx"), SessionOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Open on a closed Runtime = %v, want ErrClosed", err)
	}
	if _, err := sb.Run(x, 1, dst); err != nil {
		t.Fatalf("Run on b after a.Close: %v", err)
	}
	if r := refs(); r != 1 {
		t.Fatalf("refs = %d after closing one of two, want 1", r)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("b.Close: %v", err)
	}
	if r := refs(); r != 0 {
		t.Fatalf("refs = %d after closing both, want 0", r)
	}

	// The environment can be created again, even from another file.
	c, err := NewRuntime(other)
	if err != nil {
		t.Fatalf("NewRuntime after full close: %v", err)
	}
	sc := openTestModel(t, c, "linear_logits", SessionOptions{})
	if _, err := sc.Run(x, 1, dst); err != nil {
		t.Fatalf("Run after re-initialisation: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("c.Close: %v", err)
	}

	if _, err := NewRuntime(filepath.Join(t.TempDir(), "nope.so")); !errors.Is(err, ErrLibraryNotFound) {
		t.Fatalf("NewRuntime(missing) = %v, want ErrLibraryNotFound", err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestFindLibrary(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	installed := filepath.Join(root, ".cache", "onnxruntime", ORTVersion, "libonnxruntime.so.1")
	if err := os.MkdirAll(filepath.Dir(installed), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(installed, []byte("not really a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	deep := filepath.Join(root, "internal", "onnxrt")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	elsewhere := t.TempDir()
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}

	tests := []struct {
		name    string
		wd      string
		exe     string
		env     map[string]string
		want    string
		wantErr string
	}{
		{"override", elsewhere, "", map[string]string{LibraryEnv: installed}, installed, ""},
		{"override missing", root, "", map[string]string{LibraryEnv: filepath.Join(elsewhere, "missing.so")}, "", "missing.so"},
		{"override is a directory", root, "", map[string]string{LibraryEnv: elsewhere}, "", "is a directory"},
		{"repo root", root, "", nil, installed, ""},
		{"package dir", deep, "", nil, installed, ""},
		{"next to executable", elsewhere, filepath.Join(root, "cascadeserve"), nil, installed, ""},
		{"not installed", elsewhere, filepath.Join(elsewhere, "cascadeserve"), nil, "", "scripts/install-onnxruntime.sh"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := findLibrary(env(tt.env), tt.wd, tt.exe, cachedLibrary, ErrLibraryNotFound)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrLibraryNotFound) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("findLibrary = %q, %v; want ErrLibraryNotFound mentioning %q", got, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Fatalf("error spans lines: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("findLibrary: %v", err)
			}
			if got != tt.want {
				t.Fatalf("findLibrary = %q, want %q", got, tt.want)
			}
		})
	}
	// The exported wrapper finds the repository's library from this package
	// directory whenever it is installed.
	if _, err := FindLibrary(func(string) string { return "" }); err != nil && !errors.Is(err, ErrLibraryNotFound) {
		t.Fatalf("FindLibrary: %v", err)
	}
}

// TestRunMatchesInputType: Run takes float32 items for FP32 models only and
// RunUint8 bytes for UINT8 models only; neither converts silently.
func TestRunMatchesInputType(t *testing.T) {
	t.Parallel()
	rt := newRuntime(t)
	f32 := openTestModel(t, rt, "linear_logits", SessionOptions{})
	u8 := openTestModel(t, rt, "linear_uint8", SessionOptions{})
	dst := make([]float32, 3)
	if _, err := f32.RunUint8(make([]uint8, 6), 1, dst); !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "use Run") {
		t.Errorf("RunUint8 on a FP32 model: %v, want ErrInvalidInput", err)
	}
	if _, err := u8.Run(make([]float32, 6), 1, dst); !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "use RunUint8") {
		t.Errorf("Run on a UINT8 model: %v, want ErrInvalidInput", err)
	}
	if _, err := u8.RunUint8(make([]uint8, 5), 1, dst); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("RunUint8 with 5 bytes for an item of 6: %v, want ErrInvalidInput", err)
	}
	// 255 reaches the model as 255, not clamped or rescaled.
	x := []uint8{255, 0, 0, 0, 0, 0}
	got, err := u8.RunUint8(x, 1, dst)
	if err != nil {
		t.Fatal(err)
	}
	lin := loadLinear(t)
	assertClose(t, got, [][]float64{refSoftmax(lin.logits([]float32{255, 0, 0, 0, 0, 0}, 1)[0])}, 1e-5)
}

func TestLooksLikeProbabilities(t *testing.T) {
	t.Parallel()
	nan := float32(math.NaN())
	tests := []struct {
		row  []float32
		want bool
	}{
		{[]float32{0.2, 0.3, 0.5}, true},
		{[]float32{1, 0, 0}, true},
		{[]float32{0.2, 0.3, 0.5009}, true},
		{[]float32{0.2, 0.3, 0.502}, false},
		{[]float32{0.2, 0.3, 0.4}, false},
		{[]float32{-0.1, 0.6, 0.5}, false},
		{[]float32{1.5, -0.5}, false},
		{[]float32{nan, 1}, false},
	}
	for _, tt := range tests {
		if got := looksLikeProbabilities(tt.row); got != tt.want {
			t.Errorf("looksLikeProbabilities(%v) = %v, want %v", tt.row, got, tt.want)
		}
	}
}
