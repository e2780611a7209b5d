package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// fastPlanFile writes testdata/three-gears.json with a fast control loop
// (sample 50 ms, rate window 250 ms, dwell 300 ms) to a temporary file.
func fastPlanFile(t *testing.T) (string, *plan.Plan) {
	t.Helper()
	p := loadTestPlan(t)
	p.Hysteresis.SampleIntervalMs = 50
	p.Hysteresis.RateWindowMs = 250
	p.Hysteresis.MinDwellMs = 300
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err = plan.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return file, p
}

func testConfig(t *testing.T, planFile string, extra map[string]string) Config {
	t.Helper()
	environ := map[string]string{
		"CASCADE_PLAN":     planFile,
		"CASCADE_PIPELINE": "ctltest",
		"CASCADE_STORAGE":  "memory",
	}
	for k, v := range extra {
		environ[k] = v
	}
	cfg, err := ConfigFromEnv(environ)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// running is a controller started by startController.
type running struct {
	reg  *prometheus.Registry
	stop func() error // cancels Run and returns its error
}

func startController(t *testing.T, srv *natstest.Server, cfg Config) *running {
	t.Helper()
	return startControllerHTTP(t, srv, cfg, nil)
}

// filePlan reads the plan file cfg names, as the controller binary does.
func filePlan(t *testing.T, cfg Config) *plan.Plan {
	t.Helper()
	p, err := LoadPlan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startControllerHTTP is startController with the dashboard mounted on mux
// (nil: none), serving the plan file cfg names.
func startControllerHTTP(t *testing.T, srv *natstest.Server, cfg Config, mux *http.ServeMux) *running {
	t.Helper()
	return startControllerPlan(t, srv, cfg, filePlan(t, cfg), mux)
}

// startControllerPlan is startControllerHTTP serving p.
func startControllerPlan(t *testing.T, srv *natstest.Server, cfg Config, p *plan.Plan, mux *http.ServeMux) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	nc := srv.Connect(t) // closed by a cleanup that runs after stop's
	go func() {
		done <- Run(ctx, cfg, Deps{Deps: servicemain.Deps{Logger: logger, Registerer: reg, Conn: nc, HTTP: mux}, Plan: p})
	}()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("Run did not return 30s after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &running{reg: reg, stop: stop}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b))
	return len(b), nil
}

// fakeIngress publishes wire.IngressStats every 50 ms with an admitted
// counter growing at the rate it starts with or is set to with setRate.
type fakeIngress struct {
	rate atomic.Uint64 // float64 bits
}

func startFakeIngress(t *testing.T, nc *nats.Conn, pipeline, instance string, qps float64) *fakeIngress {
	t.Helper()
	f := &fakeIngress{}
	f.setRate(qps)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var admitted float64
		last := time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				admitted += math.Float64frombits(f.rate.Load()) * now.Sub(last).Seconds()
				last = now
				b, _ := json.Marshal(wire.IngressStats{Instance: instance, Admitted: uint64(admitted), AtUnixNano: now.UnixNano()})
				if err := nc.Publish(wire.StatsSubject(pipeline, instance), b); err != nil {
					t.Errorf("publish stats: %v", err)
					return
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return f
}

func (f *fakeIngress) setRate(qps float64) { f.rate.Store(math.Float64bits(qps)) }

// waitTimeout bounds the tests' waits for the controller to converge.
const waitTimeout = 20 * time.Second

func controlBucket(t *testing.T, srv *natstest.Server, pipeline string) jetstream.KeyValue {
	t.Helper()
	var kv jetstream.KeyValue
	natstest.WaitForState(t, "control bucket", waitTimeout, func() (bool, string) {
		var err error
		kv, err = srv.JS.KeyValue(context.Background(), wire.KVBucket(pipeline))
		return err == nil, fmt.Sprint(err)
	})
	return kv
}

// memoryBucket creates the control bucket of pipeline on srv, in memory.
func memoryBucket(t *testing.T, srv *natstest.Server, pipeline string) jetstream.KeyValue {
	t.Helper()
	kv, err := srv.JS.CreateKeyValue(context.Background(), natsbus.KVConfig(pipeline, natsbus.TopologyConfig{Storage: jetstream.MemoryStorage}))
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func readGear(t *testing.T, kv jetstream.KeyValue) (wire.GearState, uint64, error) {
	t.Helper()
	e, err := kv.Get(context.Background(), wire.KeyGear)
	if err != nil {
		return wire.GearState{}, 0, err
	}
	var st wire.GearState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		t.Fatalf("gear value %q: %v", e.Value(), err)
	}
	return st, e.Revision(), nil
}

// waitGear waits until the gear key holds gear id.
func waitGear(t *testing.T, kv jetstream.KeyValue, id string) wire.GearState {
	t.Helper()
	var st wire.GearState
	natstest.WaitForState(t, "gear "+id, waitTimeout, func() (bool, string) {
		var err error
		st, _, err = readGear(t, kv)
		return err == nil && st.Gear == id, fmt.Sprintf("%+v err=%v", st, err)
	})
	return st
}

// metricValue sums the samples of a counter, gauge or histogram count
// named name whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	var pairs []string
	for k, v := range want {
		pairs = append(pairs, k, v)
	}
	return metrictest.Sum(reg, name, pairs...)
}

// waitTicks waits until the controller has completed n more decision loops;
// with n = 1 it also waits for the loop in progress, whose metrics may lag
// the KV write a test just saw.
func waitTicks(t *testing.T, reg *prometheus.Registry, n int) {
	t.Helper()
	start := metricValue(t, reg, "cascade_controller_decision_duration_seconds", nil)
	natstest.WaitForState(t, fmt.Sprintf("%d decision loops", n), waitTimeout, func() (bool, string) {
		got := metricValue(t, reg, "cascade_controller_decision_duration_seconds", nil) - start
		return got >= float64(n), fmt.Sprintf("%v loops", got)
	})
}

// startFastPlan starts a server and a controller of the fast plan with the
// test configuration, and waits for the initial gear (accurate) in the
// control bucket kv.
func startFastPlan(t *testing.T) (srv *natstest.Server, p *plan.Plan, c *running, kv jetstream.KeyValue) {
	t.Helper()
	srv = natstest.Start(t)
	file, p := fastPlanFile(t)
	c = startController(t, srv, testConfig(t, file, nil))
	kv = controlBucket(t, srv, p.Pipeline)
	waitGear(t, kv, "accurate")
	return srv, p, c, kv
}

// waitRateAbove waits until the controller measures an intake rate above
// qps.
func waitRateAbove(t *testing.T, reg *prometheus.Registry, qps float64) {
	t.Helper()
	natstest.WaitForState(t, "rate to be measured", waitTimeout, func() (bool, string) {
		v := metricValue(t, reg, "cascade_controller_intake_requests_per_second", nil)
		return v > qps, fmt.Sprint(v)
	})
}

// storedPlan reads and parses the plan key of kv, and returns the plan and
// the key's revision.
func storedPlan(t *testing.T, kv jetstream.KeyValue) (*plan.Plan, uint64) {
	t.Helper()
	e, err := kv.Get(context.Background(), wire.KeyPlan)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Parse(e.Value())
	if err != nil {
		t.Fatalf("stored plan does not parse: %v", err)
	}
	return p, e.Revision()
}

// modelQueues checks that every one of models has its stream and consumer
// in pipeline, and returns the streams' info by model.
func modelQueues(t *testing.T, srv *natstest.Server, pipeline string, models []string) map[string]*jetstream.StreamInfo {
	t.Helper()
	ctx := context.Background()
	infos := map[string]*jetstream.StreamInfo{}
	for _, m := range models {
		s, err := srv.JS.Stream(ctx, wire.ModelStream(pipeline, m))
		if err != nil {
			t.Fatalf("stream of %s: %v", m, err)
		}
		if _, err := s.Consumer(ctx, wire.ModelConsumer(m)); err != nil {
			t.Fatalf("consumer of %s: %v", m, err)
		}
		infos[m] = s.CachedInfo()
	}
	return infos
}

func TestRunAppliesTopologyIdempotently(t *testing.T) {
	srv := natstest.Start(t)
	file, p := fastPlanFile(t)
	cfg := testConfig(t, file, nil)
	ctx := context.Background()

	first := startController(t, srv, cfg)
	kv := controlBucket(t, srv, p.Pipeline)
	st := waitGear(t, kv, "accurate")
	if st.Reason != "initial: no load measured yet" || st.Index != 0 || st.AtUnixNano == 0 {
		t.Errorf("initial gear state %+v", st)
	}
	stored, planRev := storedPlan(t, kv)
	if stored.Pipeline != p.Pipeline || len(stored.Gears) != len(p.Gears) || stored.Hysteresis != p.Hysteresis {
		t.Errorf("stored plan differs from the file: %+v", stored)
	}
	infos := modelQueues(t, srv, p.Pipeline, p.UsedModels())
	for m, info := range infos {
		if info.Config.Storage != jetstream.MemoryStorage || info.Config.MaxMsgs != 20000 {
			t.Errorf("stream of %s: storage %v max msgs %d", m, info.Config.Storage, info.Config.MaxMsgs)
		}
	}
	if err := first.stop(); err != nil {
		t.Fatalf("first Run: %v", err)
	}

	// A second start changes nothing: same streams, same plan revision, and
	// the gear in force is adopted rather than rewritten.
	_, gearRev, err := readGear(t, kv)
	if err != nil {
		t.Fatal(err)
	}
	second := startController(t, srv, cfg)
	waitTicks(t, second.reg, 3)
	if err := second.stop(); err != nil {
		t.Fatalf("second Run: %v", err)
	}
	if _, again := storedPlan(t, kv); again != planRev {
		t.Errorf("plan key rewritten: revision %d → %d", planRev, again)
	}
	if _, rev, _ := readGear(t, kv); rev != gearRev {
		t.Errorf("gear key rewritten without a switch: revision %d → %d", gearRev, rev)
	}
	for m, before := range infos {
		s, err := srv.JS.Stream(ctx, wire.ModelStream(p.Pipeline, m))
		if err != nil {
			t.Fatal(err)
		}
		if after := s.CachedInfo(); !after.Created.Equal(before.Created) {
			t.Errorf("stream of %s recreated", m)
		}
	}
}

func TestRunSwitchesUpAtOnceAndDownAfterDrain(t *testing.T) {
	srv, p, c, kv := startFastPlan(t)
	// Load beyond balanced's 200 qps from the first stats message: straight
	// to cheap, skipping balanced.
	ing := startFakeIngress(t, srv.Connect(t), p.Pipeline, "ing-1", 320)
	st := waitGear(t, kv, "cheap")
	if st.QPS <= 200 || st.Index != 2 {
		t.Errorf("switch to cheap recorded %+v", st)
	}
	// The tick that wrote the gear updates its metrics after the write.
	waitTicks(t, c.reg, 1)
	if got := metricValue(t, c.reg, "cascade_controller_gear_switches_total", map[string]string{"direction": "up"}); got != 1 {
		t.Errorf("up switches = %v, want 1 (no stop at balanced)", got)
	}

	// Items wait at small (cheap's model), nobody serves them. Load drops to
	// zero, but the backlog (50 > 0.05 s × 200 qps) keeps the gear.
	ctx := context.Background()
	for i := range 50 {
		if _, err := srv.JS.Publish(ctx, wire.ModelSubject(p.Pipeline, "small"), []byte("x"), jetstream.WithMsgID(fmt.Sprint("item-", i))); err != nil {
			t.Fatal(err)
		}
	}
	ing.setRate(0)
	natstest.WaitForState(t, "backlog gauge", waitTimeout, func() (bool, string) {
		v := metricValue(t, c.reg, "cascade_controller_backlog_messages", map[string]string{"model": "small", "state": "pending"})
		return v == 50, fmt.Sprint(v)
	})
	natstest.WaitForState(t, "rate to drop", waitTimeout, func() (bool, string) {
		v := metricValue(t, c.reg, "cascade_controller_intake_requests_per_second", nil)
		return v == 0, fmt.Sprint(v)
	})
	// Well past the dwell time (300 ms = 6 loops) at zero load.
	waitTicks(t, c.reg, 20)
	if st, _, err := readGear(t, kv); err != nil || st.Gear != "cheap" {
		t.Fatalf("gear moved down with 50 items queued: %+v %v", st, err)
	}

	// Drain the queue: back to the most accurate gear in one step.
	s, err := srv.JS.Stream(ctx, wire.ModelStream(p.Pipeline, "small"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	st = waitGear(t, kv, "accurate")
	if st.Backlog != 0 {
		t.Errorf("moved down with backlog %d", st.Backlog)
	}
	// The tick that wrote the gear updates its metrics after the write.
	waitTicks(t, c.reg, 1)
	if got := metricValue(t, c.reg, "cascade_controller_gear_switches_total", map[string]string{"direction": "down"}); got != 1 {
		t.Errorf("down switches = %v, want 1", got)
	}
	if got := metricValue(t, c.reg, "cascade_controller_gear_index", nil); got != 0 {
		t.Errorf("gear index gauge = %v, want 0", got)
	}
}

func TestRunUpOnBacklog(t *testing.T) {
	srv := natstest.Start(t)
	file, p := fastPlanFile(t)
	startController(t, srv, testConfig(t, file, map[string]string{"CASCADE_UPSHIFT_BACKLOG": "1s"}))
	kv := controlBucket(t, srv, p.Pipeline)
	waitGear(t, kv, "accurate")
	startFakeIngress(t, srv.Connect(t), p.Pipeline, "ing-1", 20)
	// 20 qps + 150 waiting at medium / 1 s = 170 qps required: balanced.
	ctx := context.Background()
	for i := range 150 {
		if _, err := srv.JS.Publish(ctx, wire.ModelSubject(p.Pipeline, "medium"), []byte("x"), jetstream.WithMsgID(fmt.Sprint("item-", i))); err != nil {
			t.Fatal(err)
		}
	}
	st := waitGear(t, kv, "balanced")
	if st.QPS > 100 {
		t.Errorf("switched on load %v, not on backlog", st.QPS)
	}
}

func TestRunRecoversFromForeignWrites(t *testing.T) {
	srv, p, c, kv := startFastPlan(t)
	startFakeIngress(t, srv.Connect(t), p.Pipeline, "ing-1", 320)
	waitGear(t, kv, "cheap")

	// Another writer forces the accurate gear, several times; the load
	// still needs cheap, so the controller writes cheap again on top of the
	// newest revision each time.
	ctx := context.Background()
	for round := range 3 {
		b, _ := json.Marshal(wire.GearState{Gear: "accurate", Index: 0, Reason: "operator", AtUnixNano: time.Now().UnixNano()})
		bumped, err := kv.Put(ctx, wire.KeyGear, b)
		if err != nil {
			t.Fatal(err)
		}
		natstest.WaitForState(t, fmt.Sprintf("round %d: controller to write over revision %d", round, bumped), waitTimeout, func() (bool, string) {
			st, rev, err := readGear(t, kv)
			return err == nil && rev > bumped && st.Gear == "cheap", fmt.Sprintf("%+v rev %d err %v", st, rev, err)
		})
	}
	// A deleted key is recreated.
	if err := kv.Delete(ctx, wire.KeyGear); err != nil {
		t.Fatal(err)
	}
	waitGear(t, kv, "cheap")
	// The tick that wrote the gear updates its metrics after the write.
	waitTicks(t, c.reg, 1)
	if got := metricValue(t, c.reg, "cascade_controller_errors_total", map[string]string{"op": "write_gear"}); got != 0 {
		t.Errorf("write_gear errors = %v", got)
	}
}

func TestRunPinnedGear(t *testing.T) {
	srv := natstest.Start(t)
	file, p := fastPlanFile(t)
	c := startController(t, srv, testConfig(t, file, map[string]string{"CASCADE_GEAR": "balanced"}))
	kv := controlBucket(t, srv, p.Pipeline)
	st := waitGear(t, kv, "balanced")
	if st.Reason != "pinned" {
		t.Errorf("pinned gear reason %q", st.Reason)
	}
	startFakeIngress(t, srv.Connect(t), p.Pipeline, "ing-1", 500)
	waitRateAbove(t, c.reg, 400)
	waitTicks(t, c.reg, 5)
	_, rev, err := readGear(t, kv)
	if err != nil {
		t.Fatal(err)
	}
	if st, _, _ := readGear(t, kv); st.Gear != "balanced" {
		t.Fatalf("pinned controller switched to %s", st.Gear)
	}
	// A foreign write is undone.
	b, _ := json.Marshal(wire.GearState{Gear: "cheap", Index: 2, Reason: "operator"})
	bumped, err := kv.Update(context.Background(), wire.KeyGear, b, rev)
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitForState(t, "pinned gear restored", waitTimeout, func() (bool, string) {
		st, rev, err := readGear(t, kv)
		return err == nil && rev > bumped && st.Gear == "balanced", fmt.Sprintf("%+v %v", st, err)
	})
	// The tick that wrote the gear updates its metrics after the write.
	waitTicks(t, c.reg, 1)
	if got := metricValue(t, c.reg, "cascade_controller_gear_switches_total", nil); got != 1 {
		// Restoring the pin after the foreign write is the only switch.
		t.Errorf("switches = %v, want 1", got)
	}
}

func TestGearStoreCompareAndSet(t *testing.T) {
	ctx := context.Background()
	kv := memoryBucket(t, natstest.Start(t), "cas")
	a, b := NewGearStore(kv), NewGearStore(kv)
	// refresh, write and read are one step each: what names the step.
	refresh := func(what string, s *GearStore, wantChanged bool) {
		t.Helper()
		if changed, err := s.Refresh(ctx); err != nil || changed != wantChanged {
			t.Fatalf("%s: changed %v err %v, want changed %v", what, changed, err, wantChanged)
		}
	}
	write := func(what string, s *GearStore, gear string, wantErr error) {
		t.Helper()
		if err := s.Write(ctx, wire.GearState{Gear: gear}); !errors.Is(err, wantErr) {
			t.Fatalf("%s: err %v, want %v", what, err, wantErr)
		}
	}
	read := func(what string, s *GearStore, gear string) {
		t.Helper()
		if st, _ := s.Current(); st.Gear != gear {
			t.Fatalf("%s read %+v, want gear %s", what, st, gear)
		}
	}
	refresh("Refresh of empty key", a, false)
	refresh("Refresh of empty key", b, false)
	write("first write", a, "accurate", nil)
	// b has not seen a's write: its Create loses.
	write("create over an existing key", b, "cheap", ErrConflict)
	refresh("b.Refresh", b, true)
	read("b", b, "accurate")
	write("write after re-read", b, "cheap", nil)
	// Now a is stale: its Update loses, and it learns b's value.
	write("update at a stale revision", a, "balanced", ErrConflict)
	refresh("a.Refresh", a, true)
	read("a", a, "cheap")
	refresh("second Refresh", a, false)
	write("write after the second Refresh", a, "balanced", nil)
	// A deleted key is created again.
	if err := kv.Delete(ctx, wire.KeyGear); err != nil {
		t.Fatal(err)
	}
	refresh("Refresh after delete", a, true)
	write("write after delete", a, "accurate", nil)
}

func TestPutPlanWritesOnlyChanges(t *testing.T) {
	ctx := context.Background()
	kv := memoryBucket(t, natstest.Start(t), "putplan")
	p := loadTestPlan(t)
	rev1, changed, err := PutPlan(ctx, kv, p)
	if err != nil || !changed {
		t.Fatalf("first put: changed %v err %v", changed, err)
	}
	rev2, changed, err := PutPlan(ctx, kv, p)
	if err != nil || changed || rev2 != rev1 {
		t.Fatalf("same plan again: rev %d→%d changed %v err %v", rev1, rev2, changed, err)
	}
	p.Gears[0].MaxQPS = 99
	rev3, changed, err := PutPlan(ctx, kv, p)
	if err != nil || !changed || rev3 <= rev2 {
		t.Fatalf("changed plan: rev %d→%d changed %v err %v", rev2, rev3, changed, err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	cfg, err := ConfigFromEnv(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	topo, err := cfg.Topology()
	if err != nil {
		t.Fatal(err)
	}
	want := natsbus.TopologyConfig{Storage: jetstream.FileStorage, Replicas: 1, MaxQueue: 20000, MaxQueueBytes: 256 << 20,
		AckWait: 2 * time.Second, MaxDeliver: 5, MaxAckPending: 4096, Duplicates: 2 * time.Minute, IdempotencyWindow: 2 * time.Minute}
	if topo != want {
		t.Errorf("default topology %+v, want %+v", topo, want)
	}
	if cfg.Pipeline != "mnist" || cfg.MetricsAddr != "127.0.0.1:9091" || cfg.UpshiftBacklog != 250*time.Millisecond || cfg.NATSURL != "nats://127.0.0.1:4222" {
		t.Errorf("defaults: %+v", cfg)
	}

	cfg, err = ConfigFromEnv(map[string]string{"CASCADE_STORAGE": "memory", "CASCADE_REPLICAS": "3", "CASCADE_QUEUE_MAX_MSGS": "7",
		"CASCADE_ACK_WAIT": "1m", "CASCADE_MAX_DELIVER": "2", "CASCADE_GEAR": "cheap", "CASCADE_PLAN": "/p.json", "CASCADE_IDEMPOTENCY_WINDOW": "10m", "CASCADE_DEDUPE_WINDOW": "90s", "CASCADE_QUEUE_DEDUPE_WINDOW": "61s"})
	if err != nil {
		t.Fatal(err)
	}
	if topo, _ := cfg.Topology(); topo.Storage != jetstream.MemoryStorage || topo.Replicas != 3 || topo.MaxQueue != 7 ||
		topo.AckWait != time.Minute || topo.MaxDeliver != 2 || cfg.Gear != "cheap" || cfg.Plan != "/p.json" || topo.IdempotencyWindow != 10*time.Minute || topo.Duplicates != 90*time.Second || topo.QueueDuplicates != 61*time.Second {
		t.Errorf("parsed %+v / %+v", cfg, topo)
	}

	cfg, err = ConfigFromEnv(map[string]string{"CASCADE_METRICS_ADDR": ""})
	if err != nil || cfg.MetricsAddr != "" {
		t.Errorf("empty CASCADE_METRICS_ADDR: %q %v", cfg.MetricsAddr, err)
	}

	_, err = ConfigFromEnv(map[string]string{"CASCADE_STORAGE": "tape", "CASCADE_REPLICAS": "0", "CASCADE_UPSHIFT_BACKLOG": "0s",
		"CASCADE_LOG_LEVEL": "loud", "CASCADE_PIPELINE": "a.b", "CASCADE_DEDUPE_WINDOW": "8s", "CASCADE_QUEUE_DEDUPE_WINDOW": "5s"})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("bad config: err %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"CASCADE_STORAGE", "CASCADE_REPLICAS", "CASCADE_UPSHIFT_BACKLOG", "CASCADE_LOG_LEVEL", "CASCADE_PIPELINE", "CASCADE_DEDUPE_WINDOW must exceed (CASCADE_MAX_DELIVER−1) × CASCADE_ACK_WAIT (8s), got 8s", "CASCADE_QUEUE_DEDUPE_WINDOW must be 0 (MaxDeliver × AckWait) or exceed (CASCADE_MAX_DELIVER−1) × CASCADE_ACK_WAIT (8s), got 5s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestLoadPlan(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		want    string // pipeline of the plan; "" for an error
		wantErr error
	}{
		{name: "file", cfg: Config{Plan: "testdata/three-gears.json", Process: servicemain.Process{Pipeline: "ctltest"}}, want: "ctltest"},
		{name: "file of another pipeline", cfg: Config{Plan: "testdata/three-gears.json", Process: servicemain.Process{Pipeline: "mnist"}}},
		{name: "missing file", cfg: Config{Plan: "testdata/none.json", Process: servicemain.Process{Pipeline: "ctltest"}}},
		{name: "no plan file", cfg: Config{Process: servicemain.Process{Pipeline: "mnist"}}, wantErr: ErrNoPlan},
		{name: "no plan file, other pipeline", cfg: Config{Process: servicemain.Process{Pipeline: "other"}}, wantErr: ErrNoPlan},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := LoadPlan(tt.cfg)
			switch {
			case tt.want == "" && err == nil:
				t.Fatalf("got plan %q, want an error", p.Pipeline)
			case tt.want == "" && tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			case tt.want != "" && err != nil:
				t.Fatal(err)
			case tt.want != "" && p.Pipeline != tt.want:
				t.Fatalf("pipeline %q, want %q", p.Pipeline, tt.want)
			}
		})
	}
}

// TestServedPlan: the plan a caller hands over (the built-in MNIST plan of
// `cascadeserve up`) is served as it is, or as a copy with
// CASCADE_QUEUE_PARTITIONS, and refused for another pipeline or when absent.
func TestServedPlan(t *testing.T) {
	builtin, err := mnist.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if len(builtin.Gears) == 0 {
		t.Error("built-in plan has no gears")
	}
	if p, err := servedPlan(Config{Process: servicemain.Process{Pipeline: "mnist"}}, builtin); err != nil || p != builtin {
		t.Errorf("built-in plan: %p, %v; want it as it is", p, err)
	}
	parts := builtin.Partitions
	p, err := servedPlan(Config{Process: servicemain.Process{Pipeline: "mnist"}, QueuePartitions: 3}, builtin)
	if err != nil || p.QueuePartitions() != 3 || builtin.Partitions != parts {
		t.Errorf("partitions 3: %v, %d partitions, the caller's plan has %d (was %d)", err, p.QueuePartitions(), builtin.Partitions, parts)
	}
	if _, err := servedPlan(Config{Process: servicemain.Process{Pipeline: "other"}}, builtin); err == nil {
		t.Error("plan of pipeline mnist served for pipeline other")
	}
	if _, err := servedPlan(Config{Process: servicemain.Process{Pipeline: "mnist"}}, nil); !errors.Is(err, ErrNoPlan) {
		t.Errorf("no plan: %v, want ErrNoPlan", err)
	}
}

func TestRunRejectsUnknownPinnedGear(t *testing.T) {
	srv := natstest.Start(t)
	file, _ := fastPlanFile(t)
	cfg := testConfig(t, file, map[string]string{"CASCADE_GEAR": "turbo"})
	err := Run(context.Background(), cfg, Deps{Deps: servicemain.Deps{Registerer: prometheus.NewRegistry(), Conn: srv.Conn}, Plan: filePlan(t, cfg)})
	if !errors.Is(err, ErrUnknownGear) {
		t.Fatalf("err %v, want ErrUnknownGear", err)
	}
}

func TestRunAdoptsStoredGear(t *testing.T) {
	tests := []struct {
		name   string
		stored string
		// want is the gear after start; rewritten whether the controller
		// had to write it.
		want      string
		rewritten bool
		reason    string
	}{
		{name: "gear in force is kept", stored: "cheap", want: "cheap"},
		{name: "unknown gear is replaced", stored: "turbo", want: "cheap", rewritten: true, reason: `gear "turbo" is not in the plan`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := natstest.Start(t)
			file, p := fastPlanFile(t)
			ctx := context.Background()
			kv := memoryBucket(t, srv, p.Pipeline)
			b, _ := json.Marshal(wire.GearState{Gear: tt.stored, Reason: "earlier controller", AtUnixNano: time.Now().UnixNano()})
			rev, err := kv.Put(ctx, wire.KeyGear, b)
			if err != nil {
				t.Fatal(err)
			}
			// Load that needs the cheap gear is already running.
			startFakeIngress(t, srv.Connect(t), p.Pipeline, "ing-1", 320)
			c := startController(t, srv, testConfig(t, file, nil))
			waitRateAbove(t, c.reg, 200)
			waitTicks(t, c.reg, 5)
			st, after, err := readGear(t, kv)
			if err != nil {
				t.Fatal(err)
			}
			if st.Gear != tt.want || (after != rev) != tt.rewritten {
				t.Errorf("gear %+v at revision %d (stored at %d), want %s rewritten=%v", st, after, rev, tt.want, tt.rewritten)
			}
			if tt.reason == "" {
				return
			}
			hist, err := kv.History(ctx, wire.KeyGear)
			if err != nil {
				t.Fatal(err)
			}
			var reasons []string
			for _, e := range hist {
				var st wire.GearState
				if err := json.Unmarshal(e.Value(), &st); err == nil {
					reasons = append(reasons, st.Reason)
				}
			}
			if !slices.ContainsFunc(reasons, func(r string) bool { return strings.Contains(r, tt.reason) }) {
				t.Errorf("no gear value with reason %q in %q", tt.reason, reasons)
			}
		})
	}
}

// TestRunRecreatesVanishedTopology: memory streams vanish when the server
// restarts; the controller notices at its next consumer poll and applies
// the topology and the plan again.
func TestRunRecreatesVanishedTopology(t *testing.T) {
	srv, p, _, _ := startFastPlan(t)
	ctx := context.Background()
	name := wire.ModelStream(p.Pipeline, "small")
	if err := srv.JS.DeleteStream(ctx, name); err != nil {
		t.Fatal(err)
	}
	natstest.WaitForState(t, "stream re-created", waitTimeout, func() (bool, string) {
		s, err := srv.JS.Stream(ctx, name)
		if err != nil {
			return false, err.Error()
		}
		_, err = s.Consumer(ctx, wire.ModelConsumer("small"))
		return err == nil, fmt.Sprint(err)
	})
}

// TestRunRepairsJobsConsumerAndPlanKey: a deleted jobs consumer is
// re-created, and a plan key overwritten with anything else (say a
// JetStream API response aimed at it) is written again.
func TestRunRepairsJobsConsumerAndPlanKey(t *testing.T) {
	srv, p, _, kv := startFastPlan(t)
	ctx := context.Background()
	jobs, err := srv.JS.Stream(ctx, wire.JobsStream(p.Pipeline))
	if err != nil {
		t.Fatal(err)
	}
	if err := jobs.DeleteConsumer(ctx, wire.JobsConsumer); err != nil {
		t.Fatal(err)
	}
	natstest.WaitForState(t, "jobs consumer re-created", waitTimeout, func() (bool, string) {
		_, err := jobs.Consumer(ctx, wire.JobsConsumer)
		return err == nil, fmt.Sprint(err)
	})
	want, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, wire.KeyPlan, []byte(`{"stream":"CASCADE_TINY_JOBS","seq":2}`)); err != nil {
		t.Fatal(err)
	}
	natstest.WaitForState(t, "plan key written again", waitTimeout, func() (bool, string) {
		e, err := kv.Get(ctx, wire.KeyPlan)
		if err != nil {
			return false, err.Error()
		}
		return bytes.Equal(e.Value(), want), string(e.Value())
	})
}

func TestTransientNATSErrors(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("ensure stream of model %q (partition 0): %w", "small", context.DeadlineExceeded), true},
		{fmt.Errorf("put plan: %w", nats.ErrTimeout), true},
		{fmt.Errorf("ensure stream: %w", nats.ErrNoResponders), true},
		{fmt.Errorf("ensure stream: %w", jetstream.ErrNoStreamResponse), true},
		{fmt.Errorf("ensure stream: %w", jetstream.ErrStreamNameAlreadyInUse), false},
		{context.Canceled, false},
		{errors.New("nats: permissions violation"), false},
	} {
		if got := transientNATS(tt.err); got != tt.want {
			t.Errorf("transientNATS(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
