package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/profile"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// systemMeasurement configures measureRequestOverhead.
type systemMeasurement struct {
	// Model runs alone in the one gear of the measured system, with the
	// profile it was measured with.
	Model   profile.Model
	Profile plan.Profile
	// QPS is the constant Poisson load; Warmup runs first, untimed, then
	// Duration is timed.
	QPS              float64
	Warmup, Duration time.Duration
	// Runners and Threads configure the one stage worker.
	Runners, Threads int
	// Batching of the gear.
	Batching plan.Batching
}

// systemResult is what measureRequestOverhead measured.
type systemResult struct {
	// CPUMsPerRequest is the process's CPU time (user + system, every
	// thread) over the timed run divided by the requests answered in it.
	CPUMsPerRequest float64
	// ModelMsPerRequest is the model's compute per request that is taken
	// out of it (the profile's per-item cost at the gear's max batch).
	ModelMsPerRequest float64
	// RequestOverheadMs = CPUMsPerRequest − ModelMsPerRequest.
	RequestOverheadMs float64
	Sent, Answered    int
	P95               time.Duration
}

// errSystemBehind means the measured system did not keep up with the load.
var errSystemBehind = errors.New("the system did not keep up")

// measureRequestOverhead runs the all-in-one system in this process
// (embedded nats-server, controller, ingress, one stage worker) serving one
// gear with the model alone, drives it with Poisson requests of MNIST test
// images from an in-process producer, and measures the process's CPU time
// per answered request. What the model's compute does not explain is the
// per-request overhead that ingress, nats-server, the producer and the
// worker's messaging put on the cores the runners share
// (plan.ProfileFile.RequestOverheadMs).
func measureRequestOverhead(ctx context.Context, m systemMeasurement) (systemResult, error) {
	dir, err := os.MkdirTemp("", "cascadeserve-profile-system-")
	if err != nil {
		return systemResult{}, err
	}
	defer os.RemoveAll(dir)
	planFile, err := writeMeasurementPlan(dir, m)
	if err != nil {
		return systemResult{}, err
	}
	sys, err := system.Start(ctx, system.Config{
		DataDir:     filepath.Join(dir, "nats"),
		NATSPort:    -1,
		MonitorPort: 0,
		PlanFile:    planFile,
		Workers:     1,
		Env: map[string]string{
			"CASCADE_WORKER_RUNNERS": strconv.Itoa(m.Runners),
			"CASCADE_WORKER_THREADS": strconv.Itoa(m.Threads),
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return systemResult{}, fmt.Errorf("start system: %w", err)
	}
	defer sys.Stop()
	images, err := mnist.TestImages()
	if err != nil {
		return systemResult{}, err
	}
	run := func(d time.Duration, seed uint64) (loadgen.Report, error) {
		return loadgen.Run(ctx, sys.Conn, loadgen.Config{
			Pipeline: sys.Plan.Pipeline, Items: images, Schedule: loadgen.Constant(m.QPS),
			Duration: d, Timeout: 2 * time.Second, Seed: seed, Client: "profile",
		})
	}
	if _, err := run(m.Warmup, 1); err != nil {
		return systemResult{}, fmt.Errorf("warm-up: %w", err)
	}
	before, err := processCPU()
	if err != nil {
		return systemResult{}, err
	}
	rep, err := run(m.Duration, 2)
	if err != nil {
		return systemResult{}, fmt.Errorf("load: %w", err)
	}
	after, err := processCPU()
	if err != nil {
		return systemResult{}, err
	}
	res := systemResult{Sent: rep.Sent, Answered: rep.Answered, P95: rep.Percentile(0.95)}
	if rep.Answered == 0 || float64(rep.Answered) < 0.99*float64(rep.Sent) {
		return res, fmt.Errorf("%w at %v requests/s: %d of %d answered (p95 %v); measure at a lower load",
			errSystemBehind, m.QPS, rep.Answered, rep.Sent, rep.Percentile(0.95))
	}
	res.CPUMsPerRequest = float64(after-before) / float64(time.Millisecond) / float64(rep.Answered)
	res.ModelMsPerRequest = m.Profile.ItemCostMs(m.Batching.MaxBatch)
	res.RequestOverheadMs = max(res.CPUMsPerRequest-res.ModelMsPerRequest, 0)
	return res, nil
}

// writeMeasurementPlan writes the model and a plan with one gear that runs
// it alone on every runner.
func writeMeasurementPlan(dir string, m systemMeasurement) (string, error) {
	file := m.Model.Name + ".onnx"
	if err := os.WriteFile(filepath.Join(dir, file), m.Model.ONNX, 0o644); err != nil {
		return "", err
	}
	p := &plan.Plan{
		Version:     plan.FormatVersion,
		Pipeline:    "mnist",
		Description: "one-gear plan of `cascadeserve profile --system-qps`",
		SLO:         plan.SLO{P95Ms: 1000},
		Capacity:    m.Runners,
		Confidence:  plan.MetricMargin,
		Input:       plan.Input{Name: "input", Datatype: "FP32", Shape: mnist.ItemShape(), Classes: mnist.Classes, UINT8Scale: 1.0 / 255},
		Models:      []plan.Model{{Name: m.Model.Name, File: file, Profile: m.Profile}},
		Ladder:      []string{m.Model.Name},
		Gears: []plan.Gear{{
			ID:        "measure",
			MaxQPS:    m.QPS,
			Cascade:   []plan.Stage{{Model: m.Model.Name}},
			Batching:  m.Batching,
			Runners:   map[string]float64{m.Model.Name: 1},
			Predicted: plan.Prediction{Accuracy: 1, P95Ms: 1, CostMsPerItem: m.Profile.ItemCostMs(m.Batching.MaxBatch), Reach: []float64{1}},
		}},
		Hysteresis: plan.DefaultHysteresis(),
	}
	if err := p.Validate(); err != nil {
		return "", fmt.Errorf("measurement plan: %w", err)
	}
	b, err := p.Marshal()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "plan.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return "", err
	}
	return path, nil
}
