package deploy_test

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"go.yaml.in/yaml/v3"
)

// TestAlertRulesPassPromtool checks the rules, runs their unit tests
// (prometheus/rules_test.yml) and checks the Prometheus config that loads
// them.
func TestAlertRulesPassPromtool(t *testing.T) {
	promtool := requireTool(t, "promtool", "prometheus")
	run(t, "prometheus", promtool, "check", "rules", "rules.yml")
	run(t, "prometheus", promtool, "test", "rules", "rules_test.yml")
	run(t, ".", promtool, "check", "config", "prometheus.yml")
}

// TestAlertsCoverTheREADMEList: every alert the README's "Worth alerting
// on" asks for has a rule, and each rule has a severity, summary and
// description.
func TestAlertsCoverTheREADMEList(t *testing.T) {
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, "prometheus/rules.yml", &f)
	var alerts []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s lacks a severity, summary or description", r.Alert)
			}
		}
	}
	for _, want := range []string{
		"CascadeOverloaded", "CascadeDeadLetters", "CascadeFailedItems", "CascadeDegradedAnswers",
		"CascadeLastGear", "CascadeWorkerGearMismatch", "CascadeNATSUnavailable", "CascadeIngressNotReady",
	} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s in prometheus/rules.yml", want)
		}
	}
}

// TestRulesAndDashboardUseDefinedMetrics: every cascade_* metric the rules,
// the dashboard and the README name is one the services define, so a
// renamed metric cannot leave an alert silently empty.
func TestRulesAndDashboardUseDefinedMetrics(t *testing.T) {
	defined := definedMetrics(t)
	name := regexp.MustCompile(`cascade_[a-z0-9_]+`)
	for _, file := range []string{"prometheus/rules.yml", "prometheus/rules_test.yml", "grafana/cascadeserve.json", "../README.md"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllString(string(b), -1) {
			base := m
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if s, ok := strings.CutSuffix(m, suffix); ok && defined[s] {
					base = s
				}
			}
			if !defined[base] {
				t.Errorf("%s reads %s, which no service defines", file, m)
			}
		}
	}
}

// definedMetrics returns the metric names the Go code defines (string
// literals cascade_* in non-test files under internal/, and the names of
// the telemetry.ServiceMetrics of each prefix given to NewServiceMetrics).
func definedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	lit := regexp.MustCompile(`"(cascade_[a-z0-9_]+)"`)
	service := regexp.MustCompile(`NewServiceMetrics\([a-z]+, "(cascade_[a-z0-9_]+)"`)
	defined := map[string]bool{}
	err := filepath.WalkDir("../internal", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllStringSubmatch(string(b), -1) {
			defined[m[1]] = true
		}
		for _, m := range service.FindAllStringSubmatch(string(b), -1) {
			ready, index, info := telemetry.ServiceMetricNames(m[1])
			defined[ready], defined[index], defined[info] = true, true, true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(defined) < 20 {
		t.Fatalf("found only %d metric names under internal/", len(defined))
	}
	return defined
}

// TestDashboardIsWellFormed parses the Grafana dashboard: unique panel ids,
// every panel queries the datasource variable, no two panels overlap, and
// the views issue 11 asks for are there.
func TestDashboardIsWellFormed(t *testing.T) {
	b, err := os.ReadFile("grafana/cascadeserve.json")
	if err != nil {
		t.Fatal(err)
	}
	type rect struct{ X, Y, W, H int }
	var d struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int                  `json:"id"`
			Type       string               `json:"type"`
			Title      string               `json:"title"`
			GridPos    rect                 `json:"gridPos"`
			Datasource struct{ UID string } `json:"datasource"`
			Targets    []struct {
				Expr       string               `json:"expr"`
				Datasource struct{ UID string } `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard has no uid or title")
	}
	if len(d.Templating.List) == 0 || d.Templating.List[0].Type != "datasource" {
		t.Error("dashboard has no datasource variable")
	}
	ids := map[int]bool{}
	var rects []rect
	var exprs strings.Builder
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		for _, r := range rects {
			if p.GridPos.X < r.X+r.W && r.X < p.GridPos.X+p.GridPos.W && p.GridPos.Y < r.Y+r.H && r.Y < p.GridPos.Y+p.GridPos.H {
				t.Errorf("panel %q overlaps another", p.Title)
			}
		}
		rects = append(rects, p.GridPos)
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if q.Expr == "" || q.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: query %q on datasource %q", p.Title, q.Expr, q.Datasource.UID)
			}
			exprs.WriteString(q.Expr + "\n")
		}
	}
	for _, want := range []string{
		"cascade_controller_gear_index", "cascade_controller_gear_info", "cascade_controller_intake_requests_per_second",
		"cascade_controller_backlog_messages", "cascade_ingress_request_duration_seconds_bucket",
		"cascade_controller_plan_slo_p95_seconds", `cascade_worker_items_total{outcome=~"answered|degraded"}`,
		"cascade_worker_degraded_total", `outcome!~"admitted|deferred"`, "cascade_worker_dead_letters_total",
		"cascade_worker_redeliveries_total", "cascade_nats_connected",
	} {
		if !strings.Contains(exprs.String(), want) {
			t.Errorf("no panel queries %s", want)
		}
	}
}

// TestDockerignoreKeepsTheContextSmall: the image build context leaves out
// build outputs, caches and git, and keeps what go build embeds.
func TestDockerignoreKeepsTheContextSmall(t *testing.T) {
	b, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, strings.TrimSuffix(strings.TrimPrefix(l, "/"), "/"))
		}
	}
	for _, want := range []string{"bin", ".cache", "data", ".git"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore does not exclude %s", want)
		}
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "models") || strings.HasPrefix(l, "internal") || l == "go.mod" || l == "*" {
			t.Errorf(".dockerignore excludes %s, which the build needs", l)
		}
	}
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}
