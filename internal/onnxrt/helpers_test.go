package onnxrt

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
)

// newRuntime opens a Runtime that is closed when the test ends.
func newRuntime(tb testing.TB) *Runtime {
	tb.Helper()
	return orttest.Runtime(tb, FindLibrary, NewRuntime)
}

// openTestModel opens testdata/<file>.onnx; the session is closed when the test ends.
func openTestModel(tb testing.TB, rt *Runtime, file string, opts SessionOptions) *Session {
	tb.Helper()
	s, err := rt.OpenFile(filepath.Join("testdata", file+".onnx"), opts)
	if err != nil {
		tb.Fatalf("open %s: %v", file, err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close %s: %v", file, err)
		}
	})
	return s
}

// linearModel is the classifier of testdata/linear*.onnx, as written by
// make_models.py into linear.json.
type linearModel struct {
	ItemShape []int64     `json:"item_shape"`
	Classes   int         `json:"classes"`
	W         [][]float64 `json:"W"`
	B         []float64   `json:"B"`
}

func loadLinear(tb testing.TB) linearModel {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "linear.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var m linearModel
	if err := json.Unmarshal(data, &m); err != nil {
		tb.Fatalf("linear.json: %v", err)
	}
	return m
}

func (m linearModel) features() int { return len(m.W) }

// logits returns x·W + B for each item of x, computed in float64.
func (m linearModel) logits(x []float32, n int) [][]float64 {
	f := m.features()
	out := make([][]float64, n)
	for i := range n {
		row := make([]float64, m.Classes)
		for j := range m.Classes {
			z := m.B[j]
			for k := range f {
				z += float64(x[i*f+k]) * m.W[k][j]
			}
			row[j] = z
		}
		out[i] = row
	}
	return out
}

// probabilities are the hand-computed class probabilities of the n items
// x: the softmax of their logits.
func (m linearModel) probabilities(x []float32, n int) [][]float64 {
	p := m.logits(x, n)
	for i := range p {
		p[i] = refSoftmax(p[i])
	}
	return p
}

// concurrently calls work(g) for g in [0, n), each in a goroutine of its
// own, and returns the errors they returned once all are done.
func concurrently(n int, work func(g int) error) []error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for g := range n {
		wg.Go(func() { errs[g] = work(g) })
	}
	wg.Wait()
	return slices.DeleteFunc(errs, func(err error) bool { return err == nil })
}

// refSoftmax is an independent float64 softmax for expectations.
func refSoftmax(z []float64) []float64 {
	m := math.Inf(-1)
	for _, v := range z {
		m = math.Max(m, v)
	}
	var sum float64
	p := make([]float64, len(z))
	for i, v := range z {
		p[i] = math.Exp(v - m)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	return p
}

// randomItems returns n items of size f with values in [lo, hi).
func randomItems(rng *rand.Rand, n, f int, lo, hi float64) []float32 {
	x := make([]float32, n*f)
	for i := range x {
		x[i] = float32(lo + (hi-lo)*rng.Float64())
	}
	return x
}

// assertClose compares got (n rows flattened) with want within tol.
func assertClose(tb testing.TB, got []float32, want [][]float64, tol float64) {
	tb.Helper()
	c := len(want[0])
	if len(got) != len(want)*c {
		tb.Fatalf("got %d values, want %d", len(got), len(want)*c)
	}
	for i, row := range want {
		for j, w := range row {
			if g := float64(got[i*c+j]); math.Abs(g-w) > tol || math.IsNaN(g) {
				tb.Fatalf("item %d class %d: got %.7f, want %.7f (row got %v, want %v)",
					i, j, g, w, got[i*c:(i+1)*c], row)
			}
		}
	}
}
