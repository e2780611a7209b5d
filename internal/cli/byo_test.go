package cli

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planner"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

// The digits ladder (internal/system/testdata/digits): UINT8 [N,28,28]
// input, softmax probabilities out, tensor names of their own.
var (
	digitsDir    = filepath.Join("..", "system", "testdata", "digits")
	digitsImages = filepath.Join("..", "..", "models", "mnist", "data", "t10k-images-idx3-ubyte.gz")
	digitsLabels = filepath.Join("..", "..", "models", "mnist", "data", "t10k-labels-idx1-ubyte.gz")
)

// TestReplayFeedsUint8ModelsBytes: IDX bytes reach UINT8 models as they
// are (not as floats rounded back to 0 or 1), the replay records the item
// shape and scale, and the same pixels given as float32 values reach them as
// the same bytes when the scale says what a byte stands for.
func TestReplayFeedsUint8ModelsBytes(t *testing.T) {
	orttest.Library(t, onnxrt.FindLibrary)
	dir := t.TempDir()
	idx := filepath.Join(dir, "idx.csreplay.gz")
	stdout, err := runCLI(t, "replay", "--images", digitsImages, "--labels", digitsLabels, "--range", "6000:7000",
		"--model-dir", digitsDir, "--ladder", "tiny,wide", "--quiet", "--out", idx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := plan.ReadReplayFile(idx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.ItemShape, []int64{28, 28}) || r.UINT8Scale != 1.0/255 {
		t.Errorf("replay records input %v scale %v, want [28 28] 1/255", r.ItemShape, r.UINT8Scale)
	}
	for _, m := range r.Models {
		correct := 0
		for i, l := range r.Labels {
			if argmax(r.Row(m, i)) == int(l) {
				correct++
			}
		}
		if correct < 800 {
			t.Errorf("model %s: %d of 1000 right, want >= 800 (bytes fed as they are)\n%s", m, correct, stdout)
		}
	}

	// The same images as float32 byte/255 values.
	set, err := dataset.ReadIDXFiles(digitsImages, digitsLabels, nil)
	if err != nil {
		t.Fatal(err)
	}
	if set, err = set.Slice(6000, 7000); err != nil {
		t.Fatal(err)
	}
	floats := filepath.Join(dir, "floats.cstensor")
	if err := dataset.WriteTensorFile(floats, &dataset.Set{ItemShape: set.ItemShape, Data: set.Data, Labels: set.Labels}, dataset.TensorOptions{}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "floats.csreplay.gz")
	// Without a scale, what a byte is worth is unknown: refused, naming the model.
	if _, err := runCLI(t, "replay", "--data", floats, "--model-dir", digitsDir, "--ladder", "tiny,wide", "--quiet", "--out", out); err == nil ||
		!strings.Contains(err.Error(), `model "tiny" takes UINT8 input`) {
		t.Fatalf("float32 data for a UINT8 model without --uint8-scale: %v, want a refusal naming the model", err)
	}
	if _, err := runCLI(t, "replay", "--data", floats, "--model-dir", digitsDir, "--ladder", "tiny,wide", "--quiet",
		"--uint8-scale", "0.00392156862745098", "--out", out); err != nil {
		t.Fatal(err)
	}
	f, err := plan.ReadReplayFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range r.Models {
		if !slices.Equal(f.Probs[m], r.Probs[m]) {
			t.Errorf("model %s: float32 pixels gave other probabilities than the same bytes", m)
		}
	}
}

// TestReplayFailsNearChance: a model that scores near chance fails the
// replay, naming it, and nothing is written, unless --allow-chance.
func TestReplayFailsNearChance(t *testing.T) {
	orttest.Library(t, onnxrt.FindLibrary)
	dir := t.TempDir()
	set, err := dataset.ReadIDXFiles(digitsImages, digitsLabels, nil)
	if err != nil {
		t.Fatal(err)
	}
	if set, err = set.Slice(6000, 6300); err != nil {
		t.Fatal(err)
	}
	// Wrong labels: every model scores far below chance on them.
	wrong := &dataset.Set{ItemShape: set.ItemShape, Data: set.Data, Labels: make([]int32, set.Len())}
	for i, l := range set.Labels {
		wrong.Labels[i] = (l + 1) % 10
	}
	data := filepath.Join(dir, "wrong.cstensor.gz")
	if err := dataset.WriteTensorFile(data, wrong, dataset.TensorOptions{DType: dataset.Uint8, Divisor: 255}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "r.csreplay.gz")
	args := []string{"replay", "--data", data, "--model-dir", digitsDir, "--ladder", "small", "--quiet", "--out", out}
	_, err = runCLI(t, args...)
	t.Log(err)
	if !errors.Is(err, ErrChanceAccuracy) || !strings.Contains(err.Error(), `model "small"`) || errors.Is(err, ErrUsage) {
		t.Fatalf("replay of a model at chance: %v, want ErrChanceAccuracy naming the model", err)
	}
	if _, statErr := os.Stat(out); !errors.Is(statErr, os.ErrNotExist) {
		t.Fatalf("replay written despite the failure (%v)", statErr)
	}
	if _, err := runCLI(t, append(args, "--allow-chance")...); err != nil {
		t.Fatalf("--allow-chance: %v", err)
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatalf("--allow-chance wrote nothing: %v", err)
	}
}

// TestPlanTakesTheReplaysInput: a plan's input is the one its replay
// recorded; another --uint8-scale is refused, and a plan far below the
// ladder's best model is refused naming the cause.
func TestPlanTakesTheReplaysInput(t *testing.T) {
	dir := t.TempDir()
	ladder := plantest.Ladder()[:3]
	r := plantest.Replay(t, 2, 600, 10, ladder)
	r.ItemShape, r.UINT8Scale = []int64{28, 28}, 1.0/255
	replay := filepath.Join(dir, "val.csreplay.gz")
	if err := r.WriteFile(replay); err != nil {
		t.Fatal(err)
	}
	profile := filepath.Join(dir, "profile.json")
	if err := plantest.ProfileFile(ladder, 0.2).Save(profile); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "plan.json")
	args := []string{"plan", "--replay", replay, "--profile", profile, "--pipeline", "digits", "--slo", "10ms", "--capacity", "3",
		"--qps", "100:1000", "--buckets", "2", "--grid", "5", "--sim-requests", "300", "--out", out}
	if stdout, stderr, err := runWithOutput(args...); err != nil {
		t.Fatalf("plan: %v\n%s%s", err, stdout, stderr)
	}
	p, err := plan.LoadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Input.Shape, []int64{28, 28}) || p.Input.UINT8Scale != 1.0/255 {
		t.Errorf("plan input %v scale %v, want the replay's [28 28] 1/255", p.Input.Shape, p.Input.UINT8Scale)
	}
	if _, _, err := runWithOutput(append(args, "--uint8-scale", "1")...); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "differs from the replay's") {
		t.Errorf("--uint8-scale other than the replay's: %v, want a usage error", err)
	}
	if _, _, err := runWithOutput(append(args, "--input-shape", "3,3")...); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "--input-shape [3 3] has 9 values") {
		t.Errorf("--input-shape of another size: %v, want a usage error", err)
	}

	// The best model (medium) far beyond the SLO: one runner, no gear with it.
	slow := plantest.ProfileFile(ladder, 0.2)
	slow.Models["medium"] = plan.Profile{Threads: 1, Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: 50}, {Batch: 128, LatencyMs: 6400}}}
	if err := slow.Save(profile); err != nil {
		t.Fatal(err)
	}
	gapArgs := append(slices.Clone(args), "--capacity", "1")
	_, _, err = runWithOutput(gapArgs...)
	if !errors.Is(err, planner.ErrAccuracyGap) || !strings.Contains(err.Error(), `model "medium" alone takes 50`) {
		t.Fatalf("plan far below the best model: %v, want ErrAccuracyGap naming medium's latency", err)
	}
	if _, _, err := runWithOutput(append(gapArgs, "--max-accuracy-gap", "-1")...); err != nil {
		t.Fatalf("--max-accuracy-gap -1: %v", err)
	}
}
