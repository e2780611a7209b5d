package cli

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

func TestReplayUsageErrors(t *testing.T) {
	testUsageErrors(t, "replay", []usageCase{
		{"no out", []string{"--split", "mnist-test"}},
		{"no data", []string{"--out", "x"}},
		{"two data sets", []string{"--out", "x", "--split", "mnist-test", "--data", "d.cstensor"}},
		{"unknown split", []string{"--out", "x", "--split", "cifar"}},
		{"images without labels", []string{"--out", "x", "--images", "i.gz"}},
		{"mnist-dir without validation", []string{"--out", "x", "--split", "mnist-test", "--mnist-dir", "/tmp"}},
		{"models and model-dir", []string{"--out", "x", "--split", "mnist-test", "--models", "a=a.onnx", "--model-dir", "d"}},
		{"ladder without model-dir", []string{"--out", "x", "--split", "mnist-test", "--ladder", "a"}},
		{"zero batch", []string{"--out", "x", "--split", "mnist-test", "--batch", "0"}},
		{"zero threads", []string{"--out", "x", "--split", "mnist-test", "--threads", "0"}},
		{"bad range", []string{"--out", "x", "--split", "mnist-test", "--range", "5"}},
		{"unknown flag", []string{"--out", "x", "--split", "mnist-test", "--frobnicate"}},
		{"extra argument", []string{"--out", "x", "--split", "mnist-test", "extra"}},
		{"bad models entry", []string{"--out", "x", "--split", "mnist-test", "--models", "a.onnx"}},
	})
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		in       string
		from, to int
		ok       bool
	}{
		{"0:10", 0, 10, true},
		{"3:", 3, 100, true},
		{":7", 0, 7, true},
		{":", 0, 100, true},
		{"99:100", 99, 100, true},
		{"5:5", 0, 0, false},
		{"6:5", 0, 0, false},
		{"0:101", 0, 0, false},
		{"-1:5", 0, 0, false},
		{"a:5", 0, 0, false},
		{"5", 0, 0, false},
	}
	for _, tc := range tests {
		from, to, err := parseRange(tc.in, 100)
		if (err == nil) != tc.ok || (tc.ok && (from != tc.from || to != tc.to)) {
			t.Errorf("parseRange(%q) = %d, %d, %v; want %d, %d, ok=%v", tc.in, from, to, err, tc.from, tc.to, tc.ok)
		}
	}
}

// assertReplayRows checks that got holds the rows [from, from+got.Len()) of
// want for the given models, labels included.
func assertReplayRows(t *testing.T, got, want *plan.Replay, from int, models []string) {
	t.Helper()
	if !slices.Equal(got.Models, models) || got.Classes != want.Classes {
		t.Fatalf("replay models %v classes %d, want %v %d", got.Models, got.Classes, models, want.Classes)
	}
	if !slices.Equal(got.Labels, want.Labels[from:from+got.Len()]) {
		t.Fatal("labels differ from the committed replay")
	}
	for _, m := range models {
		for i := range got.Len() {
			a, b := got.Row(m, i), want.Row(m, from+i)
			for c := range a {
				if math.Abs(float64(a[c]-b[c])) > 1e-5 {
					t.Fatalf("%s item %d class %d: %v, committed replay has %v", m, from+i, c, a[c], b[c])
				}
			}
		}
	}
}

// TestReplayEmbeddedLadder regenerates part of the committed MNIST test
// replay with the default (embedded) ladder.
func TestReplayEmbeddedLadder(t *testing.T) {
	orttest.Library(t, onnxrt.FindLibrary)
	out := filepath.Join(t.TempDir(), "test.csreplay.gz")
	if _, err := runCLI(t, "replay", "--split", "mnist-test", "--range", "100:400", "--batch", "64", "--out", out); err != nil {
		t.Fatal(err)
	}
	got, err := plan.ReadReplayFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := mnist.TestReplay()
	if err != nil {
		t.Fatal(err)
	}
	if got.Len() != 300 {
		t.Fatalf("replay has %d items, want 300", got.Len())
	}
	assertReplayRows(t, got, want, 100, mnist.Ladder())
}

// TestReplayUserFiles runs models given as files over data given as a
// tensor file and as IDX files.
func TestReplayUserFiles(t *testing.T) {
	orttest.Library(t, onnxrt.FindLibrary)
	dir := t.TempDir()
	test, err := mnist.TestImages()
	if err != nil {
		t.Fatal(err)
	}
	part, err := test.Slice(0, 200)
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "part.cstensor.gz")
	if err := dataset.WriteTensorFile(data, part, dataset.TensorOptions{DType: dataset.Uint8, Divisor: 255}); err != nil {
		t.Fatal(err)
	}
	modelDir := filepath.Join(dir, "models")
	if err := os.Mkdir(modelDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"linear", "mlp_small"} {
		b, err := mnist.Model(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(modelDir, name+".onnx"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := mnist.TestReplay()
	if err != nil {
		t.Fatal(err)
	}
	idxDir := filepath.Join("..", "..", "models", "mnist", "data")
	tests := []struct {
		name   string
		args   []string
		from   int
		models []string
	}{
		{"tensor file, models flag", []string{"--data", data, "--models",
			"mlp_small=" + filepath.Join(modelDir, "mlp_small.onnx") + ",linear=" + filepath.Join(modelDir, "linear.onnx")},
			0, []string{"mlp_small", "linear"}},
		{"tensor file range, model dir", []string{"--data", data, "--range", "50:", "--model-dir", modelDir},
			50, []string{"linear", "mlp_small"}},
		{"idx files, ladder", []string{"--images", filepath.Join(idxDir, "t10k-images-idx3-ubyte.gz"),
			"--labels", filepath.Join(idxDir, "t10k-labels-idx1-ubyte.gz"), "--range", "9900:",
			"--model-dir", modelDir, "--ladder", "mlp_small", "--batch", "7"},
			9900, []string{"mlp_small"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "r.csreplay.gz")
			if _, err := runCLI(t, append([]string{"replay", "--out", out}, tc.args...)...); err != nil {
				t.Fatal(err)
			}
			got, err := plan.ReadReplayFile(out)
			if err != nil {
				t.Fatal(err)
			}
			assertReplayRows(t, got, want, tc.from, tc.models)
		})
	}
}

func TestReplayRejectsMismatchedModel(t *testing.T) {
	orttest.Library(t, onnxrt.FindLibrary)
	dir := t.TempDir()
	// Items of 3 values cannot feed a model that takes 1×28×28.
	data := filepath.Join(dir, "small.cstensor")
	set := &dataset.Set{ItemShape: []int64{3}, Data: []float32{1, 2, 3}, Labels: []int32{0}}
	if err := dataset.WriteTensorFile(data, set, dataset.TensorOptions{}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "r.csreplay.gz")
	_, err := runCLI(t, "replay", "--data", data, "--out", out)
	if err == nil || errors.Is(err, ErrUsage) {
		t.Fatalf("error %v, want an item shape error", err)
	}
	if _, statErr := os.Stat(out); !errors.Is(statErr, os.ErrNotExist) {
		t.Fatalf("replay file written despite the error (%v)", statErr)
	}
}

// TestReplayShowsProgress: replay draws a progress bar over the items of
// every model on stderr, unless --quiet.
func TestReplayShowsProgress(t *testing.T) {
	orttest.Library(t, onnxrt.FindLibrary)
	for _, quiet := range []bool{false, true} {
		args := []string{"replay", "--split", "mnist-test", "--range", "0:64", "--batch", "16", "--out", filepath.Join(t.TempDir(), "r.csreplay.gz")}
		if quiet {
			args = append(args, "--quiet")
		}
		stdout, stderr, err := runWithEnv(context.Background(), os.Getenv, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr)
		}
		total := fmt.Sprintf("/%d", 64*len(mnist.Ladder()))
		bar := strings.Contains(stderr, total) && strings.Contains(stderr, "replay "+mnist.Ladder()[0])
		if bar == quiet {
			t.Errorf("quiet %v: progress bar shown %v:\n%q", quiet, bar, stderr)
		}
		if !strings.Contains(stderr, "replay: "+mnist.Ladder()[0]) || !strings.Contains(stdout, "wrote ") {
			t.Errorf("quiet %v: per-model lines or summary missing:\n%s\n%s", quiet, stderr, stdout)
		}
	}
}
