package mnist

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// Tolerances of the comparisons below.
const (
	goldenTolerance   = 1e-4 // ONNX Runtime vs PyTorch probabilities
	replayTolerance   = 1e-5 // committed replay vs live ONNX Runtime
	accuracyTolerance = 0.05 // percentage points, Go vs training report
	inferenceBatch    = 500
)

func openModel(tb testing.TB, rt *onnxrt.Runtime, name string, opts onnxrt.SessionOptions) *onnxrt.Session {
	tb.Helper()
	b, err := Model(name)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := rt.Open(name, b, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close %s: %v", name, err)
		}
	})
	return s
}

// infer returns the session's probabilities for every item of set.
func infer(t *testing.T, s *onnxrt.Session, set *dataset.Set) []float32 {
	t.Helper()
	k, size := s.Info().NumClasses, set.ItemSize()
	out := make([]float32, set.Len()*k)
	for from := 0; from < set.Len(); from += inferenceBatch {
		to := min(from+inferenceBatch, set.Len())
		if _, err := s.Run(set.Data[from*size:to*size], to-from, out[from*k:to*k]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func report(t *testing.T) *TrainingReport {
	t.Helper()
	r, err := Report()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type golden struct {
	Count         int                    `json:"count"`
	Classes       int                    `json:"classes"`
	Labels        []int32                `json:"labels"`
	Probabilities map[string][][]float64 `json:"probabilities"`
}

func readGolden(t *testing.T) *golden {
	t.Helper()
	b, err := os.ReadFile("testdata/golden.json")
	if err != nil {
		t.Fatal(err)
	}
	var g golden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if g.Count < 100 || g.Classes != Classes || len(g.Labels) != g.Count {
		t.Fatalf("golden file has %d items, %d classes, %d labels", g.Count, g.Classes, len(g.Labels))
	}
	return &g
}

// maxDiff returns the largest absolute difference between two probability
// tables and the item where it occurs.
func maxDiff(a, b []float32, k int) (float64, int) {
	worst, at := 0.0, -1
	for i := range a {
		if d := math.Abs(float64(a[i]) - float64(b[i])); d > worst || math.IsNaN(d) {
			worst, at = d, i/k
		}
	}
	return worst, at
}

// TestLadderMatchesReferences runs every model over all test images (and the
// validation split when the MNIST training files are available) with ONNX
// Runtime and checks the result against what was committed: the PyTorch
// golden probabilities, the accuracies of the training report and the replay
// files.
func TestLadderMatchesReferences(t *testing.T) {
	rt := orttest.Runtime(t, onnxrt.FindLibrary, onnxrt.NewRuntime)
	test, err := TestImages()
	if err != nil {
		t.Fatal(err)
	}
	var val *dataset.Set
	if dir, err := FindTrainDir(context.Background(), "."); err != nil {
		t.Logf("validation split not checked against live inference: %v", err)
	} else if val, err = ValidationImages(dir); err != nil {
		t.Fatal(err)
	}
	testReplay, err := TestReplay()
	if err != nil {
		t.Fatal(err)
	}
	valReplay, err := ValidationReplay()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*plan.Replay{testReplay, valReplay} {
		if !slices.Equal(r.Models, Ladder()) || r.Classes != Classes {
			t.Fatalf("replay has models %v and %d classes, want %v and %d", r.Models, r.Classes, Ladder(), Classes)
		}
	}
	if !slices.Equal(testReplay.Labels, test.Labels) {
		t.Fatal("test replay labels differ from the MNIST test labels")
	}
	if val != nil && !slices.Equal(valReplay.Labels, val.Labels) {
		t.Fatal("validation replay labels differ from the MNIST training labels [55000,60000)")
	}
	g := readGolden(t)
	if !slices.Equal(g.Labels, test.Labels[:g.Count]) {
		t.Fatal("golden labels differ from the first MNIST test labels")
	}
	reports := map[string]ModelReport{}
	for _, m := range report(t).Models {
		reports[m.Name] = m
	}

	for _, name := range Ladder() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := openModel(t, rt, name, onnxrt.SessionOptions{})
			probs := infer(t, s, test)
			k := Classes

			want := make([]float32, 0, g.Count*k)
			for _, row := range g.Probabilities[name] {
				for _, v := range row {
					want = append(want, float32(v))
				}
			}
			if len(want) != g.Count*k {
				t.Fatalf("golden file has %d values for %s, want %d", len(want), name, g.Count*k)
			}
			if d, at := maxDiff(probs[:g.Count*k], want, k); d > goldenTolerance {
				t.Errorf("ONNX Runtime differs from PyTorch by %.3g on test item %d (tolerance %g)", d, at, goldenTolerance)
			}

			correct := 0
			for i, l := range test.Labels {
				if _, label := plan.Confidence(plan.MetricMaxProb, probs[i*k:(i+1)*k]); label == int(l) {
					correct++
				}
			}
			acc := 100 * float64(correct) / float64(test.Len())
			if want := reports[name].TestAccuracy; math.Abs(acc-want) > accuracyTolerance {
				t.Errorf("test accuracy %.2f%% through ONNX Runtime, training report says %.2f%%", acc, want)
			}

			if d, at := maxDiff(probs, testReplay.Probs[name], k); d > replayTolerance {
				t.Errorf("test replay differs from live inference by %.3g on item %d", d, at)
			}
			if val != nil {
				if d, at := maxDiff(infer(t, s, val), valReplay.Probs[name], k); d > replayTolerance {
					t.Errorf("validation replay differs from live inference by %.3g on item %d", d, at)
				}
			}
		})
	}
}

// TestModelInterface checks what every model promises its callers.
func TestModelInterface(t *testing.T) {
	rt := orttest.Runtime(t, onnxrt.FindLibrary, onnxrt.NewRuntime)
	for _, name := range Ladder() {
		info := openModel(t, rt, name, onnxrt.SessionOptions{}).Info()
		if info.InputName != "input" || info.OutputName != "logits" || !slices.Equal(info.ItemShape, ItemShape()) ||
			info.NumClasses != Classes || info.InputType != onnxrt.InputFP32 || info.OutputKind != onnxrt.OutputLogits {
			t.Errorf("%s: %+v", name, info)
		}
	}
}

// TestReportMatchesEmbeddedModels ties the training report to the committed
// ONNX files and checks the ladder's promises.
func TestReportMatchesEmbeddedModels(t *testing.T) {
	r := report(t)
	var names []string
	for _, m := range r.Models {
		names = append(names, m.Name)
		b, err := Model(m.Name)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != m.ONNXSHA256 {
			t.Errorf("%s: embedded ONNX sha256 %s, report says %s (retrain or rerun train.py)", m.Name, got, m.ONNXSHA256)
		}
	}
	if !slices.Equal(names, Ladder()) {
		t.Fatalf("report models %v, Ladder() %v", names, Ladder())
	}
	if first := r.Models[0]; first.TestAccuracy < 90 {
		t.Errorf("cheapest model %s: test accuracy %.2f%% < 90%%", first.Name, first.TestAccuracy)
	}
	if last := r.Models[len(r.Models)-1]; last.TestAccuracy < 99 {
		t.Errorf("most accurate model %s: test accuracy %.2f%% < 99%%", last.Name, last.TestAccuracy)
	}
	for i := 1; i < len(r.Models); i++ {
		if a, b := r.Models[i-1], r.Models[i]; b.TestAccuracy <= a.TestAccuracy || b.MACsPerItem <= a.MACsPerItem {
			t.Errorf("ladder not increasing: %s (%.2f%%, %d MACs) before %s (%.2f%%, %d MACs)",
				a.Name, a.TestAccuracy, a.MACsPerItem, b.Name, b.TestAccuracy, b.MACsPerItem)
		}
	}
	if _, err := Model("resnet50"); !errors.Is(err, ErrUnknownModel) {
		t.Errorf("Model(resnet50): %v, want ErrUnknownModel", err)
	}
}

// TestREADMETable checks that the model table in README.md shows the numbers
// of training-report.json.
func TestREADMETable(t *testing.T) {
	f, err := os.Open("README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// | `name` | parameters | test % | validation % | ...
	row := regexp.MustCompile("^\\| `([a-z_]+)` \\| ([0-9,]+) \\| ([0-9.]+) \\| ([0-9.]+) \\|")
	got := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			got[m[1]] = m[2:]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, m := range report(t).Models {
		want := []string{
			commas(m.Parameters),
			strconv.FormatFloat(m.TestAccuracy, 'f', 2, 64),
			strconv.FormatFloat(m.ValidationAccuracy, 'f', 2, 64),
		}
		if !slices.Equal(got[m.Name], want) {
			t.Errorf("README row for %s: %v, want %v (parameters, test %%, validation %%)", m.Name, got[m.Name], want)
		}
	}
}

func commas(n int) string {
	s := strconv.Itoa(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func TestValidationImagesMissingDir(t *testing.T) {
	_, err := ValidationImages(t.TempDir())
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error %v, want one wrapping os.ErrNotExist", err)
	}
}

// BenchmarkModels measures the per-item cost of every model with ONNX Runtime
// on one intra-op thread:
//
//	go test ./models/mnist -run '^$' -bench Models -benchtime 2s
func BenchmarkModels(b *testing.B) {
	rt := orttest.Runtime(b, onnxrt.FindLibrary, onnxrt.NewRuntime)
	test, err := TestImages()
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range Ladder() {
		for _, batch := range []int{1, 32, 256} {
			b.Run(fmt.Sprintf("model=%s/batch=%d", name, batch), func(b *testing.B) {
				s := openModel(b, rt, name, onnxrt.SessionOptions{IntraOpThreads: 1})
				in := test.Data[:batch*test.ItemSize()]
				dst := make([]float32, batch*Classes)
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.Run(in, batch, dst); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*batch), "µs/item")
			})
		}
	}
}
