package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// demoPeakShare is the demo's default peak as a share of the plan's top:
// the cheapest gear's max_qps is the cores' limit, which the knee checks
// measure within about ±20% on a shared 2-core box, and the demo's load
// generator runs on the same cores.
const demoPeakShare = 0.65

func runDemo(ctx context.Context, env Env, args []string) error {
	fs := newFlagSet(env, "demo", "demo [flags]")
	var sf systemFlags
	sf.register(fs, env, "warn")
	duration := fs.Duration("duration", 60*time.Second, "length of the load run")
	low := fs.Float64("low", 0, "starting and ending load in requests/s (default: 30% of the most accurate gear's max_qps)")
	peak := fs.Float64("peak", 0, "peak load in requests/s (default: 65% of the cheapest gear's max_qps: the top of the planned range is the cores' limit, where the measured knees spread by ±20%, and the in-process load generator shares the cores)")
	timeout := fs.Duration("timeout", 2*time.Second, "per-request deadline")
	dashAddr := fs.String("dashboard", "", "serve the live dashboard (and /metrics) here while the demo runs, e.g. 127.0.0.1:9090")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	cfg, err := sf.config(env)
	if err != nil {
		return err
	}
	cleanup, err := isolateDemo(fs, &cfg)
	if err != nil {
		return err
	}
	defer cleanup()
	images, err := mnist.TestImages()
	if err != nil {
		return err
	}
	if *dashAddr != "" {
		stop := serveDemoDashboard(ctx, env, &cfg, *dashAddr)
		defer stop()
	}
	fmt.Fprintln(env.Stdout, "Starting CascadeServe: embedded nats-server, controller, ingress, stage worker (all MNIST models loaded)…")
	start := time.Now()
	sys, err := system.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer sys.Stop()
	p := sys.Plan
	if *low <= 0 {
		*low = 0.3 * p.Gears[0].MaxQPS
	}
	if *peak <= 0 {
		*peak = demoPeakShare * p.Gears[len(p.Gears)-1].MaxQPS
	}
	fmt.Fprintf(env.Stdout, "Ready in %v. Plan %q: SLO p95 %.0f ms, gears %s.\n", time.Since(start).Round(time.Millisecond), p.Pipeline, p.SLO.P95Ms, gearNames(p.Gears))
	fmt.Fprintf(env.Stdout, "Load: Poisson arrivals rising %.0f → %.0f req/s and back over %v, MNIST test images, deadline %v.\n\n", *low, *peak, *duration, *timeout)

	switches := watchGears(ctx, sys.JS, p.Pipeline, env.Stdout, start)
	rep, err := loadgen.Run(ctx, sys.Conn, loadgen.Config{
		Pipeline: p.Pipeline, Items: images, Schedule: loadgen.Ramp(*low, *peak, *duration),
		Duration: *duration, Timeout: *timeout, Seed: 1, Tick: demoTicker(ctx, env.Stdout, sys.JS, p.Pipeline, p.UsedModels()),
		TickEvery: time.Second, Client: "demo",
	})
	if err != nil {
		return err
	}
	printSummary(env.Stdout, rep, switches())
	if ctx.Err() != nil {
		fmt.Fprintln(env.Stdout, "interrupted; stopping cleanly…")
	}
	return nil
}

// isolateDemo makes the demo self-contained: a fresh store and free ports,
// so it never replays leftovers of an earlier run or collides with
// `cascadeserve up`. Flags given on the command line (fs) are kept.
// cleanup removes the fresh store.
func isolateDemo(fs *flag.FlagSet, cfg *system.Config) (cleanup func(), err error) {
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	cleanup = func() {}
	if cfg.NATSURL == "" && !explicit["data"] {
		dir, err := os.MkdirTemp("", "cascadeserve-demo-")
		if err != nil {
			return nil, err
		}
		cleanup = func() { os.RemoveAll(dir) }
		cfg.DataDir = dir
	}
	if !explicit["port"] {
		cfg.NATSPort = -1
	}
	if !explicit["monitor-port"] {
		cfg.MonitorPort = 0
	}
	return cleanup, nil
}

// serveDemoDashboard serves the live dashboard and /metrics of the system
// cfg starts on addr until the returned stop is called (or ctx ends).
func serveDemoDashboard(ctx context.Context, env Env, cfg *system.Config, addr string) (stop func()) {
	reg := telemetry.NewRegistry()
	cfg.Registerer = reg
	cfg.HTTP = telemetry.Handler(reg)
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- telemetry.Serve(sctx, addr, telemetry.HTTPSecurity{}, cfg.HTTP, cfg.Logger) }()
	fmt.Fprintf(env.Stdout, "Dashboard: http://%s/dashboard\n", addr)
	return func() { cancel(); <-served }
}

// demoTicker returns the load run's tick: a line of offered and served
// load, gear, each model's backlog, accuracy, latency and errors on w.
func demoTicker(ctx context.Context, w io.Writer, js jetstream.JetStream, pipeline string, models []string) func(loadgen.Snapshot) {
	fmt.Fprintf(w, "%6s %8s %8s  %-10s %-28s %8s %8s %8s %s\n", "t", "offered", "served", "gear", "backlog "+strings.Join(models, "/"), "accuracy", "p50", "p95", "errors")
	return func(s loadgen.Snapshot) {
		backlog := modelBacklogs(ctx, js, pipeline, models)
		acc := 0.0
		if s.Answered > 0 {
			acc = 100 * float64(s.Correct) / float64(s.Answered)
		}
		fmt.Fprintf(w, "%5.0fs %8.0f %8.0f  %-10s %-28s %7.2f%% %8s %8s %d\n", s.Elapsed.Seconds(), s.OfferedQPS, s.ServedQPS, s.LastGear,
			strings.Join(backlog, "/"), acc, ms(s.P50), ms(s.P95), s.Errors)
	}
}

// modelBacklogs is each model's backlog (pending and unacked items of its
// consumer), "?" where it cannot be read within 200ms.
func modelBacklogs(ctx context.Context, js jetstream.JetStream, pipeline string, models []string) []string {
	backlog := make([]string, len(models))
	for i, m := range models {
		backlog[i] = "?"
		ictx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		c, err := js.Consumer(ictx, wire.ModelStream(pipeline, m), wire.ModelConsumer(m))
		if err == nil {
			if info, err := c.Info(ictx); err == nil {
				backlog[i] = fmt.Sprint(info.NumPending + uint64(info.NumAckPending))
			}
		}
		cancel()
	}
	return backlog
}

// printSummary prints what a load run measured.
func printSummary(w io.Writer, rep loadgen.Report, switches []string) {
	fmt.Fprintf(w, "\nSummary\n")
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintf(tw, "  requests sent\t%d\n", rep.Sent)
	fmt.Fprintf(tw, "  answered\t%d\n", rep.Answered)
	errs := rep.ErrorCounts()
	codes := slices.Sorted(maps.Keys(errs))
	var es []string
	for _, c := range codes {
		es = append(es, fmt.Sprintf("%s %d", c, errs[c]))
	}
	fmt.Fprintf(tw, "  typed errors\t%d %v\n", rep.Sent-rep.Answered-rep.Lost, es)
	fmt.Fprintf(tw, "  without any result\t%d\n", rep.Lost)
	fmt.Fprintf(tw, "  accuracy (answered)\t%.2f%%\n", 100*rep.Accuracy())
	fmt.Fprintf(tw, "  served throughput\t%.0f req/s\n", rep.Throughput())
	fmt.Fprintf(tw, "  latency p50 / p95 / p99\t%s / %s / %s ms\n", ms(rep.Percentile(0.5)), ms(rep.Percentile(0.95)), ms(rep.Percentile(0.99)))
	byGear := rep.ByGear()
	gears := slices.Sorted(maps.Keys(byGear))
	var gs []string
	for _, g := range gears {
		gs = append(gs, fmt.Sprintf("%s %d", g, byGear[g]))
	}
	fmt.Fprintf(tw, "  answers by gear\t%s\n", strings.Join(gs, ", "))
	by := map[string]int{}
	degraded := 0
	for _, o := range rep.Outcomes {
		if o.Code == "" {
			by[o.AnsweredBy]++
			if o.Degraded {
				degraded++
			}
		}
	}
	var bs []string
	for _, m := range slices.Sorted(maps.Keys(by)) {
		bs = append(bs, fmt.Sprintf("%s %d", m, by[m]))
	}
	fmt.Fprintf(tw, "  answered by model\t%s (degraded %d)\n", strings.Join(bs, ", "), degraded)
	fmt.Fprintf(tw, "  gear switches\t%d\n", len(switches))
	tw.Flush()
}

// watchGears prints every gear switch the controller writes and returns a
// function listing them.
func watchGears(ctx context.Context, js jetstream.JetStream, pipeline string, w io.Writer, start time.Time) func() []string {
	var mu sync.Mutex
	var seen []string
	kv, err := js.KeyValue(ctx, wire.KVBucket(pipeline))
	if err != nil {
		return func() []string { return nil }
	}
	watcher, err := kv.Watch(ctx, wire.KeyGear, jetstream.UpdatesOnly())
	if err != nil {
		return func() []string { return nil }
	}
	go func() {
		defer watcher.Stop()
		for e := range watcher.Updates() {
			if e == nil {
				continue
			}
			var gs wire.GearState
			if json.Unmarshal(e.Value(), &gs) != nil {
				continue
			}
			line := fmt.Sprintf("  ⇢ %5.1fs gear → %s (%s)", time.Since(start).Seconds(), gs.Gear, gs.Reason)
			mu.Lock()
			seen = append(seen, line)
			mu.Unlock()
			fmt.Fprintln(w, line)
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

func gearNames(gears []plan.Gear) string {
	names := make([]string, len(gears))
	for i, g := range gears {
		names[i] = fmt.Sprintf("%s≤%.0f", g.ID, g.MaxQPS)
	}
	return strings.Join(names, ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
