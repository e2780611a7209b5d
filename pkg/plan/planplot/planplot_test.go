package planplot

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

func goldenPlan(t *testing.T) *plan.Plan {
	t.Helper()
	p, err := plan.LoadFile(filepath.Join("..", "planner", "testdata", "plan-calibrated.golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWriteSVGShowsEveryGear(t *testing.T) {
	p := goldenPlan(t)
	if len(Front(p)) == 0 {
		t.Fatal("no Pareto front in the golden plan's metadata")
	}
	var buf bytes.Buffer
	if err := Write(p, &buf, "svg"); err != nil {
		t.Fatalf("Write: %v", err)
	}
	svg := buf.String()
	if !strings.HasPrefix(strings.TrimSpace(svg), "<?xml") || !strings.Contains(svg, "<svg") {
		t.Fatalf("not an SVG: %.80q", svg)
	}
	for _, g := range p.Gears {
		if !strings.Contains(svg, ">"+g.ID+"<") {
			t.Errorf("gear %s is not labelled", g.ID)
		}
	}
	for _, title := range []string{"Pareto front", "accuracy (%) against load", "predicted p95"} {
		if !strings.Contains(svg, title) {
			t.Errorf("no %q panel", title)
		}
	}
}

func TestWriteFilePNG(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plan.png")
	if err := WriteFile(goldenPlan(t), file); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 600 || b.Dy() < 400 {
		t.Errorf("image is %v", b)
	}
	if err := WriteFile(goldenPlan(t), filepath.Join(t.TempDir(), "plan.nope")); err == nil {
		t.Error("unknown format accepted")
	}
	if err := Write(&plan.Plan{}, &bytes.Buffer{}, "svg"); err == nil {
		t.Error("plan without gears accepted")
	}
}
