package stageworker

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// testModels are the MNIST models the integration tests use, cheapest
// first.
var testModels = []string{"linear", "mlp_small", "mlp"}

// requireORT returns the ONNX Runtime library, or skips the test (fails it
// when CASCADE_REQUIRE_ORT=1).
func requireORT(t testing.TB) string {
	t.Helper()
	lib, err := onnxrt.FindLibrary(os.Getenv)
	if err != nil {
		if os.Getenv("CASCADE_REQUIRE_ORT") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	for _, m := range testModels {
		if _, err := mnist.Model(m); err != nil {
			t.Skipf("MNIST model not available yet: %v", err)
		}
	}
	return lib
}

// planOption changes the test plan before it is validated.
type planOption func(*plan.Plan)

// withProfile sets a model's profile to a flat latency per batch.
func withLatency(model string, ms float64) planOption {
	return func(p *plan.Plan) {
		for i := range p.Models {
			if p.Models[i].Name == model {
				p.Models[i].Profile = plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: ms}, {Batch: 256, LatencyMs: ms}}}
			}
		}
	}
}

// testPlan is an MNIST plan over testModels with the given gears (at least
// one). Profiles are rough CPU numbers; tests that depend on them set
// their own.
func testPlan(t testing.TB, gears []plan.Gear, opts ...planOption) *plan.Plan {
	t.Helper()
	p := &plan.Plan{
		Version: plan.FormatVersion, Pipeline: "mnist", SLO: plan.SLO{P95Ms: 50}, Capacity: 2,
		Confidence: plan.MetricMargin,
		Input:      plan.Input{Name: "input", Datatype: "FP32", Shape: mnist.ItemShape(), Classes: mnist.Classes},
		Ladder:     testModels, Overheads: plan.Overheads{HopOverheadMs: 0.3}, Gears: gears, Hysteresis: plan.DefaultHysteresis(),
	}
	for i, m := range testModels {
		lat := 0.02 * float64(i+1)
		p.Models = append(p.Models, plan.Model{Name: m, File: "onnx/" + m + ".onnx",
			Profile: plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: lat}, {Batch: 64, LatencyMs: 20 * lat}}}})
	}
	p.Models[1].Temperature = 1.5 // exercise calibration
	for _, o := range opts {
		o(p)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

// gear builds a gear: stages as model, threshold pairs; the last threshold
// is ignored.
func gear(id string, qps float64, maxBatch int, delayMs float64, stages ...any) plan.Gear {
	g := plan.Gear{ID: id, MaxQPS: qps, Batching: plan.Batching{MaxBatch: maxBatch, MaxDelayMs: delayMs}}
	for i := 0; i < len(stages); i += 2 {
		s := plan.Stage{Model: stages[i].(string)}
		if i+2 < len(stages) {
			s.Threshold = stages[i+1].(float64)
		}
		g.Cascade = append(g.Cascade, s)
	}
	return g
}

// switchGears are the gears of the gear-switch tests: "acc", a
// three-stage cascade, and "fast", a cheaper two-stage one with larger
// batches.
func switchGears() []plan.Gear {
	return []plan.Gear{
		gear("acc", 100, 16, 2, "linear", 0.9, "mlp_small", 0.8, "mlp"),
		gear("fast", 200, 32, 1, "linear", 0.5, "mlp_small"),
	}
}

// testEnv is a NATS server with the pipeline's topology and control keys.
type testEnv struct {
	srv  *natstest.Server
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	plan *plan.Plan
	lib  string
}

func startEnv(t testing.TB, p *plan.Plan) *testEnv {
	return startEnvWith(t, p, natsbus.TopologyConfig{})
}

// startEnvWith is startEnv with the stream and consumer limits of topo.
func startEnvWith(t testing.TB, p *plan.Plan, topo natsbus.TopologyConfig) *testEnv {
	t.Helper()
	lib := requireORT(t)
	srv := natstest.Start(t)
	kv := srv.Topology(t, p, topo)
	natstest.PutPlan(t, kv, p)
	return &testEnv{srv: srv, js: srv.JS, kv: kv, plan: p, lib: lib}
}

// setGear writes the gear key as the controller does, stamped now.
func (e *testEnv) setGear(t testing.TB, id string) wire.GearState {
	t.Helper()
	return natstest.PutGear(t, e.kv, e.plan, id)
}

// testWorker is a worker running Run in the background.
type testWorker struct {
	reg    *prometheus.Registry
	conn   *nats.Conn
	cancel context.CancelFunc
	done   chan error
	// crashed workers (connection closed under them) may return an error.
	crashed bool
}

// startWorker runs a worker on its own connection with a small idle wait
// and nak delay; edit adjusts the config. It is stopped by t.Cleanup (and
// must then return nil).
func (e *testEnv) startWorker(t testing.TB, edit func(*Config), h hooks) *testWorker {
	t.Helper()
	nc, err := nats.Connect(e.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return e.startWorkerOn(t, nc, edit, h)
}

// startWorkerOn is startWorker on a given connection, which it closes at
// cleanup.
func (e *testEnv) startWorkerOn(t testing.TB, nc *nats.Conn, edit func(*Config), h hooks) *testWorker {
	t.Helper()
	cfg, err := ConfigFromEnv(map[string]string{
		"CASCADE_METRICS_ADDR":     "",
		"CASCADE_ONNXRUNTIME_LIB":  e.lib,
		"CASCADE_WORKER_IDLE_WAIT": "50ms",
		"CASCADE_WORKER_NAK_DELAY": "20ms",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.NATSURL = e.srv.URL
	if edit != nil {
		edit(&cfg)
	}
	// The MNIST models, or the folder the test names, as the binary opens it.
	models := mnist.Files()
	if cfg.ModelDir != "" {
		if models, err = ModelFiles(cfg); err != nil {
			t.Fatal(err)
		}
	}
	tw := &testWorker{reg: prometheus.NewRegistry(), conn: nc, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	tw.cancel = cancel
	go func() {
		tw.done <- Run(ctx, cfg, Deps{Deps: servicemain.Deps{Logger: testLogger(t), Registerer: tw.reg, Conn: nc}, Models: models, hooks: h})
	}()
	t.Cleanup(func() { tw.stop(t); nc.Close() })
	return tw
}

// stop cancels the worker and waits for Run to return; Run must return nil.
func (tw *testWorker) stop(t testing.TB) {
	t.Helper()
	if tw.cancel == nil {
		return
	}
	tw.cancel()
	tw.cancel = nil
	select {
	case err := <-tw.done:
		if err != nil && !tw.crashed {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("Run did not return 30s after cancel")
	}
}

// counter reads a metric of the worker's registry, summed over the series
// matching labels (name, value pairs): a counter's or gauge's value, a
// histogram's sample count (0 if absent).
func (tw *testWorker) counter(name string, labels ...string) float64 {
	return metrictest.Sum(tw.reg, name, labels...)
}

// settledCounter waits up to 10 s for counter name to reach at least want
// and returns it. A worker counts an item's outcome when it acknowledges
// the message, which is after the item's reply is out: a test that has
// seen every reply may read a count a moment early.
func (tw *testWorker) settledCounter(t testing.TB, want float64, name string, labels ...string) float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := tw.counter(name, labels...)
		if got >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// histSum is the sum of a histogram's samples over the matching series.
func (tw *testWorker) histSum(name string, labels ...string) float64 {
	return metrictest.HistogramSum(tw.reg, name, labels...)
}

// testImages decodes the MNIST test set once per test binary (decoding
// dominates the tests' run time under -race).
var testImages = sync.OnceValues(mnist.TestImages)

// images returns the first n MNIST test images.
func images(t testing.TB, n int) *dataset.Set {
	t.Helper()
	set, err := testImages()
	if err != nil {
		t.Fatal(err)
	}
	s, err := set.Slice(0, n)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newItem builds an in-flight item as ingress would, for image img.
func newItem(p *plan.Plan, id, gear string, img []float32, deadline time.Time) *wire.Item {
	now := time.Now()
	it := &wire.Item{
		ID: id, Pipeline: p.Pipeline, Client: "test",
		Input:        wire.FP32Tensor(p.Input.Shape, img),
		AdmittedGear: gear, AdmittedUnixNano: now.UnixNano(), EnqueuedUnixNano: now.UnixNano(),
	}
	if !deadline.IsZero() {
		it.DeadlineUnixNano = deadline.UnixNano()
	}
	return it
}

// admit publishes items to model's queue as ingress does (msg id
// <id>.<model>, awaiting the PubAck).
func (e *testEnv) admit(t testing.TB, model string, items ...*wire.Item) {
	t.Helper()
	codec := wire.NewCodec()
	for _, it := range items {
		b, err := codec.EncodeItem(it)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(wire.ModelSubject(e.plan.Pipeline, model))
		m.Data = b
		m.Header.Set(wire.HeaderMsgID, it.ID+"."+model)
		if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatalf("admit %s: %v", it.ID, err)
		}
	}
}

// replies collects results sent to a reply inbox (core NATS).
type replies struct {
	mu  sync.Mutex
	got map[string][]*wire.Result
	n   int
}

func (e *testEnv) listen(t testing.TB, subject string) *replies {
	t.Helper()
	r := &replies{got: map[string][]*wire.Result{}}
	nc := e.srv.Connect(t)
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		var res wire.Result
		if err := decodeResultMsg(m.Header, m.Data, &res); err != nil {
			t.Errorf("reply: %v", err)
			return
		}
		r.mu.Lock()
		r.got[res.ID] = append(r.got[res.ID], &res)
		r.n++
		r.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return r
}

func (r *replies) snapshot() (map[string][]*wire.Result, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]*wire.Result, len(r.got))
	for k, v := range r.got {
		out[k] = slices.Clone(v)
	}
	return out, r.n
}

// durableResults reads every result stored for client on the results
// stream, by id, decoded by its Content-Type header.
func (e *testEnv) durableResults(t testing.TB, client string) (map[string][]*wire.Result, int) {
	t.Helper()
	out := map[string][]*wire.Result{}
	msgs := e.durableMsgs(t, client)
	for _, m := range msgs {
		var res wire.Result
		if err := decodeResultMsg(m.Header, m.Data, &res); err != nil {
			t.Fatal(err)
		}
		if got, want := m.Header.Get(wire.HeaderMsgID), wire.ResultMsgID(e.plan.Pipeline, res.ID); got != want {
			t.Errorf("result %s: %s %q, want %q", res.ID, wire.HeaderMsgID, got, want)
		}
		out[res.ID] = append(out[res.ID], &res)
	}
	return out, len(msgs)
}

// durableMsgs reads every message stored for client on the results stream.
func (e *testEnv) durableMsgs(t testing.TB, client string) []*nats.Msg {
	t.Helper()
	return e.srv.StoredMsgs(t, wire.ResultsStream, wire.ResultSubject(e.plan.Pipeline, client))
}

// decodeResultMsg decodes a result message by its Content-Type header,
// which every result must carry, and checks that an error result carries
// the header Cascade-Error with its code.
func decodeResultMsg(h nats.Header, data []byte, res *wire.Result) error {
	ct := h.Get(wire.HeaderContentType)
	if ct != wire.ContentTypeJSON && ct != wire.ContentTypeMsgpack {
		return fmt.Errorf("result with Content-Type %q", ct)
	}
	if err := wire.DecodeResultBody(ct, data, res); err != nil {
		return fmt.Errorf("decode %s result: %w", ct, err)
	}
	want := ""
	if res.Error != nil {
		want = string(res.Error.Code)
	}
	if got := h.Get(wire.HeaderError); got != want {
		return fmt.Errorf("result %s: %s %q, want %q", res.ID, wire.HeaderError, got, want)
	}
	return nil
}

// queuesEmpty reports whether every model's work queue is empty and
// nothing is awaiting an ack.
func (e *testEnv) queuesEmpty(t testing.TB) bool {
	t.Helper()
	for _, m := range e.plan.UsedModels() {
		if e.srv.StreamMsgs(t, wire.ModelStream(e.plan.Pipeline, m)) != 0 {
			return false
		}
	}
	return true
}

// oracle is the in-process replay: every model's calibrated confidence and
// label for every image, computed one image at a time with the same
// functions the worker uses.
type oracle struct {
	conf  map[string][]float64
	label map[string][]int
}

func newOracle(t testing.TB, e *testEnv, set *dataset.Set) *oracle {
	t.Helper()
	rt, err := onnxrt.NewRuntime(e.lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close() })
	o := &oracle{conf: map[string][]float64{}, label: map[string][]int{}}
	for _, name := range testModels {
		data, err := mnist.Model(name)
		if err != nil {
			t.Fatal(err)
		}
		s, err := rt.Open(name, data, onnxrt.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		m, _ := e.plan.Model(name)
		probs := make([]float32, mnist.Classes)
		for i := range set.Len() {
			if _, err := s.Run(set.Item(i), 1, probs); err != nil {
				t.Fatal(err)
			}
			plan.Calibrate(probs, m.Temperature)
			c, l := plan.Confidence(e.plan.Confidence, probs)
			o.conf[name] = append(o.conf[name], c)
			o.label[name] = append(o.label[name], l)
		}
		_ = s.Close()
	}
	return o
}

// near reports whether image i's confidence under model is within float
// noise of threshold: batched and single-image inference may differ in the
// last bits, so such an item's decision is not checked.
func (o *oracle) near(model string, i int, threshold float64) bool {
	return math.Abs(o.conf[model][i]-threshold) < 1e-4
}

// cascade returns the model of the gear's cascade that answers image i,
// and whether the decision is too close to a threshold to check.
func (o *oracle) cascade(g plan.Gear, i int) (model string, ambiguous bool) {
	for j, s := range g.Cascade {
		last := j == len(g.Cascade)-1
		if !last && o.near(s.Model, i, s.Threshold) {
			ambiguous = true
		}
		if plan.Answers(o.conf[s.Model][i], s.Threshold, last) {
			return s.Model, ambiguous
		}
	}
	panic("unreachable: the last stage answers")
}

// planRevision is the control bucket's plan key revision.
func (e *testEnv) planRevision(t testing.TB) uint64 {
	t.Helper()
	en, err := e.kv.Get(context.Background(), wire.KeyPlan)
	if err != nil {
		t.Fatal(err)
	}
	return en.Revision()
}

// testLogger is the logger of the workers the tests run: info and above, to
// the test log.
func testLogger(t testing.TB) *slog.Logger { return natstest.Logger(t, slog.LevelInfo) }
