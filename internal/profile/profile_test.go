package profile

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt/orttest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

func TestBatchSizes(t *testing.T) {
	for _, tt := range []struct {
		max  int
		want []int
	}{{1, []int{1}}, {8, []int{1, 2, 4, 8}}, {12, []int{1, 2, 4, 8, 12}}, {0, nil}} {
		if got := BatchSizes(tt.max); !slices.Equal(got, tt.want) {
			t.Errorf("BatchSizes(%d) = %v, want %v", tt.max, got, tt.want)
		}
	}
}

func TestMeasure(t *testing.T) {
	rt := orttest.Runtime(t, onnxrt.FindLibrary, onnxrt.NewRuntime)
	var models []Model
	for _, name := range []string{"linear", "mlp_small"} {
		b, err := mnist.Model(name)
		if err != nil {
			t.Fatal(err)
		}
		models = append(models, Model{Name: name, ONNX: b})
	}
	var calls []int
	f, err := Measure(context.Background(), rt, Config{
		Models: models, MaxBatch: 8, Repetitions: 3, Warmup: 1, HopSamples: 10,
		Progress: func(done, total int, what string) {
			calls = append(calls, done)
			if total != 2*4+1 {
				t.Errorf("progress total %d, want 9", total)
			}
		},
	})
	if err != nil {
		t.Fatalf("Measure: %v", err)
	}
	if err := f.Validate(); err != nil {
		t.Fatalf("profile does not validate: %v", err)
	}
	if !slices.Equal(calls, []int{1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Errorf("progress calls %v", calls)
	}
	for _, m := range models {
		p := f.Models[m.Name]
		var batches []int
		for i, pt := range p.Points {
			batches = append(batches, pt.Batch)
			if i > 0 && pt.LatencyMs < p.Points[i-1].LatencyMs {
				t.Errorf("%s: latency falls from batch %d to %d", m.Name, p.Points[i-1].Batch, pt.Batch)
			}
		}
		if !slices.Equal(batches, []int{1, 2, 4, 8}) || p.Threads != 1 || p.Provider != "cpu" {
			t.Errorf("%s: batches %v, threads %d, provider %q", m.Name, batches, p.Threads, p.Provider)
		}
	}
	if !(f.HopOverheadMs > 0) || !(f.ItemOverheadMs > 0) || !(f.BatchOverheadMs > 0) {
		t.Errorf("hop %v ms, item overhead %v ms, batch overhead %v ms: want all measured", f.HopOverheadMs, f.ItemOverheadMs, f.BatchOverheadMs)
	}
	if f.Provider != "cpu" || f.ProviderOptions != nil {
		t.Errorf("provider %q, options %v: want cpu, none", f.Provider, f.ProviderOptions)
	}
	if !strings.HasPrefix(f.Runtime, "onnxruntime ") || f.Host == "" || f.Version != plan.ProfileFormatVersion {
		t.Errorf("metadata: %q, %q, version %d", f.Runtime, f.Host, f.Version)
	}
	// The file round-trips through Save and LoadProfileFile.
	path := t.TempDir() + "/profile.json"
	if err := f.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := plan.LoadProfileFile(path)
	if err != nil {
		t.Fatalf("LoadProfileFile: %v", err)
	}
	if back.Models["linear"].Points[3] != f.Models["linear"].Points[3] {
		t.Error("profile changed in a save/load round trip")
	}
}

func TestMeasureWithoutNATS(t *testing.T) {
	rt := orttest.Runtime(t, onnxrt.FindLibrary, onnxrt.NewRuntime)
	b, err := mnist.Model("linear")
	if err != nil {
		t.Fatal(err)
	}
	f, err := Measure(context.Background(), rt, Config{Models: []Model{{Name: "linear", ONNX: b}}, MaxBatch: 2, Repetitions: 1, HopSamples: -1})
	if err != nil {
		t.Fatal(err)
	}
	if f.HopOverheadMs != 0 || f.ItemOverheadMs != 0 || f.BatchOverheadMs != 0 {
		t.Errorf("NATS costs %v, %v, %v without measuring them", f.HopOverheadMs, f.ItemOverheadMs, f.BatchOverheadMs)
	}
}

func TestMeasureErrors(t *testing.T) {
	rt := orttest.Runtime(t, onnxrt.FindLibrary, onnxrt.NewRuntime)
	_, err := Measure(context.Background(), rt, Config{Models: []Model{{Name: "junk", ONNX: []byte("not onnx")}}, HopSamples: -1})
	if err == nil || !strings.Contains(err.Error(), `"junk"`) {
		t.Errorf("garbage model: %v, want an error naming it", err)
	}
	if _, err := Measure(context.Background(), rt, Config{}); err == nil {
		t.Error("no models accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b, _ := mnist.Model("linear")
	if _, err := Measure(ctx, rt, Config{Models: []Model{{Name: "linear", ONNX: b}}, HopSamples: -1}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if _, err := MeasureNATS(context.Background(), 0, 10); err == nil {
		t.Error("zero hop samples accepted")
	}
}
