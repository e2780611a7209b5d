package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planner"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

// planInputs writes a synthetic replay and profile into dir.
func planInputs(t *testing.T, dir string) (replay, profile string) {
	t.Helper()
	ladder := plantest.Ladder()[:3]
	r := plantest.Replay(t, 2, 600, 10, ladder)
	replay = filepath.Join(dir, "val.csreplay.gz")
	if err := r.WriteFile(replay); err != nil {
		t.Fatal(err)
	}
	profile = filepath.Join(dir, "profile.json")
	if err := plantest.ProfileFile(ladder, 0.2).Save(profile); err != nil {
		t.Fatal(err)
	}
	return replay, profile
}

func TestPlanShowSimulate(t *testing.T) {
	dir := t.TempDir()
	replay, profile := planInputs(t, dir)
	out := filepath.Join(dir, "plans", "plan.json")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := runWithOutput("plan", "--replay", replay, "--profile", profile, "--pipeline", "syn",
		"--input-shape", "1,28,28", "--slo", "10ms", "--capacity", "3", "--qps", "100:8000", "--buckets", "6",
		"--grid", "7", "--sim-requests", "500", "--models-dir", filepath.Join(dir, "onnx"), "--delays", "0,1ms,2", "--out", out)
	if err != nil {
		t.Fatalf("plan: %v\n%s", err, stdout)
	}
	for _, want := range []string{"planned", "gears in", "g1", "wrote " + out} {
		if !strings.Contains(stdout, want) {
			t.Errorf("plan output lacks %q:\n%s", want, stdout)
		}
	}
	p, err := plan.LoadFile(out)
	if err != nil {
		t.Fatalf("written plan does not load: %v", err)
	}
	if m, _ := p.Model("tiny"); m.File != "../onnx/tiny.onnx" {
		t.Errorf("model file %q, want ../onnx/tiny.onnx (relative to the plan)", m.File)
	}
	if got := p.Planner["delays_ms"]; len(got.([]any)) != 3 {
		t.Errorf("delays searched %v, want the three given", got)
	}

	svg := filepath.Join(dir, "plan.svg")
	stdout, _, err = runWithOutput("plan", "show", out, "--plot", svg)
	if err != nil {
		t.Fatalf("plan show: %v", err)
	}
	if !strings.Contains(stdout, "cascade (model@threshold)") || !strings.Contains(stdout, p.Gears[0].ID) {
		t.Errorf("plan show output:\n%s", stdout)
	}
	if b, err := os.ReadFile(svg); err != nil || !bytes.Contains(b, []byte("<svg")) {
		t.Errorf("plot not written: %v", err)
	}

	stdout, _, err = runWithOutput("plan", "show", out, "--json")
	if err != nil {
		t.Fatalf("plan show --json: %v", err)
	}
	var shown planShow
	if err := json.Unmarshal([]byte(stdout), &shown); err != nil {
		t.Fatalf("plan show --json is not JSON: %v\n%s", err, stdout)
	}
	if shown.Pipeline != "syn" || shown.SLOP95Ms != 10 || shown.Capacity != 3 || shown.RunnerPool != plan.RunnerPoolShared || len(shown.Gears) != len(p.Gears) {
		t.Errorf("plan show --json header: %+v", shown)
	}
	for i, g := range shown.Gears {
		pg := p.Gears[i]
		if g.ID != pg.ID || g.MaxQPS != pg.MaxQPS || len(g.Runners) != len(pg.Cascade) || g.Predicted.Accuracy != pg.Predicted.Accuracy ||
			g.OpenEnded != (i == len(p.Gears)-1) || (i > 0 && g.MinQPS != p.Gears[i-1].MaxQPS) {
			t.Errorf("plan show --json gear %d: %+v, plan has %+v", i, g, pg)
		}
	}

	stdout, _, err = runWithOutput("simulate", "--plan", out, "--scale", "3", "--duration", "200ms", "--json")
	if err != nil {
		t.Fatalf("simulate --json: %v", err)
	}
	var sim simulateReport
	if err := json.Unmarshal([]byte(stdout), &sim); err != nil {
		t.Fatalf("simulate --json is not JSON: %v\n%s", err, stdout)
	}
	if sim.Scale != 3 || sim.DurationMs != 200 || len(sim.Runs) != len(p.Gears) {
		t.Errorf("simulate --json: %+v", sim)
	}
	for i, r := range sim.Runs {
		if r.Gear != p.Gears[i].ID || r.QPS != 3*p.Gears[i].MaxQPS || r.Result.P95Ms <= 0 || len(r.Result.Stages) != len(p.Gears[i].Cascade) ||
			r.MeetsSLO != (r.Result.P95Ms <= p.SLO.P95Ms && r.Result.Dropped == 0) {
			t.Errorf("simulate --json run %d: %+v", i, r)
		}
	}

	stdout, _, err = runWithOutput("simulate", "--plan", out, "--scale", "3", "--duration", "200ms")
	if err != nil {
		t.Fatalf("simulate: %v", err)
	}
	if lines := strings.Count(stdout, "\n"); lines != 2+len(p.Gears) {
		t.Errorf("simulate printed %d lines for %d gears:\n%s", lines, len(p.Gears), stdout)
	}
	stdout, _, err = runWithOutput("simulate", "--plan", out, "--qps", "100:4000:3", "--duration", "200ms")
	if err != nil || strings.Count(stdout, "\n") != 5 {
		t.Errorf("simulate --qps: %v\n%s", err, stdout)
	}
}

func TestPlanUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"nothing", []string{"plan"}, "--profile is required"},
		{"bad qps", []string{"plan", "--profile", "p", "--out", "o", "--capacity", "2", "--qps", "9:3"}, "--qps"},
		{"min-cost without target", []string{"plan", "--profile", "p", "--out", "o", "--capacity", "2", "--qps", "1:3", "--mode", "min-cost"}, "--target-accuracy"},
		{"other pipeline", []string{"plan", "--profile", "p", "--out", "o", "--capacity", "2", "--qps", "1:3", "--pipeline", "x"}, "--input-shape"},
		{"show without file", []string{"plan", "show"}, "plan file is required"},
		{"simulate without plan", []string{"simulate"}, "--plan is required"},
		{"simulate bad loads", []string{"simulate", "--plan", "p", "--qps", "1:2"}, "not a load"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runWithOutput(tt.args...)
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want a usage error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestPlanReportsPlannerErrors(t *testing.T) {
	dir := t.TempDir()
	replay, profile := planInputs(t, dir)
	_, _, err := runWithOutput("plan", "--replay", replay, "--profile", profile, "--pipeline", "syn", "--input-shape", "784",
		"--slo", "100us", "--capacity", "2", "--qps", "10:20", "--out", filepath.Join(dir, "p.json"))
	if !errors.Is(err, planner.ErrInfeasible) {
		t.Errorf("impossible SLO: %v, want ErrInfeasible", err)
	}
	_, _, err = runWithOutput("plan", "--replay", replay, "--profile", profile, "--pipeline", "syn", "--input-shape", "784",
		"--models", "tiny,ghost", "--capacity", "2", "--qps", "10:20", "--out", filepath.Join(dir, "p.json"))
	if !errors.Is(err, plan.ErrBadReplay) {
		t.Errorf("unknown model: %v, want ErrBadReplay", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "p.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed plan left a file behind: %v", err)
	}
}
