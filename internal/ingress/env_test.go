package ingress_test

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/internal/telemetry/metrictest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

const pipeline = "tiny"

// testEnv is an embedded nats-server with the tiny pipeline's topology.
type testEnv struct {
	srv  *natstest.Server
	plan *plan.Plan
	kv   jetstream.KeyValue
}

// startEnv applies the topology; the plan key is written only by putPlan,
// so tests can start an ingress before the pipeline is ready.
func startEnv(t testing.TB) *testEnv { return startEnvWith(t, natsbus.TopologyConfig{}) }

// startEnvWith is startEnv with the stream and consumer limits of topo.
func startEnvWith(t testing.TB, topo natsbus.TopologyConfig) *testEnv {
	t.Helper()
	srv := natstest.Start(t)
	p := natstest.TinyPlan(t)
	return &testEnv{srv: srv, plan: p, kv: srv.Topology(t, p, topo)}
}

func (e *testEnv) putPlan(t testing.TB) { natstest.PutPlan(t, e.kv, e.plan) }

func (e *testEnv) putGear(t testing.TB, id string) { natstest.PutGear(t, e.kv, e.plan, id) }

// ready starts the pipeline (plan key) and an ingress, and waits until it
// is ready.
func (e *testEnv) ready(t testing.TB, edit func(*ingress.Config)) *testIngress {
	t.Helper()
	e.putPlan(t)
	ti := e.startIngress(t, edit)
	ti.waitReady(t)
	return ti
}

// testIngress is a running ingress.Run with an HTTP listener on loopback.
type testIngress struct {
	url     string
	reg     *prometheus.Registry
	cancel  context.CancelFunc
	stopped chan struct{} // closed when Run returned
	err     error         // what Run returned
}

func testConfig(t testing.TB) ingress.Config {
	t.Helper()
	cfg, err := ingress.ConfigFromEnv(map[string]string{
		"CASCADE_PIPELINE":                 pipeline,
		"CASCADE_HTTP_ADDR":                "",
		"CASCADE_METRICS_ADDR":             "",
		"CASCADE_INGRESS_POLL_INTERVAL":    "20ms",
		"CASCADE_INGRESS_JOBS_MAX_WAIT":    "100ms",
		"CASCADE_INGRESS_JOBS_RETRY_DELAY": "20ms",
		"CASCADE_INGRESS_STATS_INTERVAL":   "20ms",
		"CASCADE_INGRESS_REPLY_GRACE":      "500ms",
	})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func (e *testEnv) startIngress(t testing.TB, edit func(*ingress.Config)) *testIngress {
	t.Helper()
	return e.startIngressOn(t, e.srv.Connect(t), edit)
}

func (e *testEnv) startIngressOn(t testing.TB, nc *nats.Conn, edit func(*ingress.Config)) *testIngress {
	t.Helper()
	cfg := testConfig(t)
	if edit != nil {
		edit(&cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ti := &testIngress{url: "http://" + ln.Addr().String(), reg: prometheus.NewRegistry(), cancel: cancel, stopped: make(chan struct{})}
	go func() {
		defer close(ti.stopped)
		ti.err = ingress.Run(ctx, cfg, ingress.Deps{Deps: servicemain.Deps{Logger: testLogger(t), Registerer: ti.reg, Conn: nc}, HTTPListener: ln})
	}()
	t.Cleanup(func() { ti.stop(t) })
	return ti
}

// stop cancels Run and checks that it returns nil in bounded time.
func (ti *testIngress) stop(t testing.TB) {
	t.Helper()
	ti.cancel()
	ti.waitStopped(t, 30*time.Second, "cancel")
}

// waitStopped waits up to d for Run to return nil, after what it should
// return after.
func (ti *testIngress) waitStopped(t testing.TB, d time.Duration, after string) {
	t.Helper()
	select {
	case <-ti.stopped:
		if ti.err != nil {
			t.Fatalf("ingress.Run returned %v", ti.err)
		}
	case <-time.After(d):
		t.Fatalf("ingress.Run did not return within %v of %s", d, after)
	}
}

func (ti *testIngress) waitReady(t testing.TB) { ti.waitHealth(t, "ready", 20*time.Second) }

// waitHealth waits up to d for the HTTP endpoint /v2/health/<probe> (live
// or ready) to answer 200.
func (ti *testIngress) waitHealth(t testing.TB, probe string, d time.Duration) {
	t.Helper()
	natstest.WaitFor(t, "HTTP "+probe, d, func() bool {
		resp, err := http.Get(ti.url + "/v2/health/" + probe)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// counter returns the sum of a metric's series with the given label pairs
// (0 if absent): a counter's or a gauge's value, a histogram's count.
func (ti *testIngress) counter(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return metrictest.Sum(ti.reg, name, labels...)
}

// responder stands in for the stage workers: it serves one model's queue
// and answers every item at once. The answer is computed from the item's
// canonical input, so tests see what the ingress published: Label is the
// rounded sum of the input values, Confidence the first value, and
// Probabilities (when asked) the first three values.
type responder struct {
	mu    sync.Mutex
	items []*wire.Item
	// envelopes holds the number of items of each envelope taken.
	envelopes []int
}

func (e *testEnv) respond(t testing.TB, model string) *responder {
	t.Helper()
	return e.respondAfter(t, model, nil)
}

// respondAfter is respond, holding every item until gate is closed (nil:
// answer at once).
func (e *testEnv) respondAfter(t testing.TB, model string, gate <-chan struct{}) *responder {
	t.Helper()
	nc := e.srv.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(context.Background(), wire.ModelStream(pipeline, model), wire.ModelConsumer(model))
	if err != nil {
		t.Fatal(err)
	}
	r := &responder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	codec := wire.NewCodec()
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			batch, err := cons.Fetch(16, jetstream.FetchMaxWait(50*time.Millisecond))
			if err != nil {
				continue
			}
			for msg := range batch.Messages() {
				var env wire.Envelope
				if err := wire.DecodeEnvelope(msg.Data(), &env); err != nil {
					t.Errorf("responder %s: %v", model, err)
					_ = msg.Term()
					continue
				}
				r.mu.Lock()
				r.envelopes = append(r.envelopes, len(env.Items))
				r.mu.Unlock()
				failed := false
				for k := range env.Items {
					it := &env.Items[k]
					r.mu.Lock()
					r.items = append(r.items, it)
					r.mu.Unlock()
					if gate != nil {
						select {
						case <-gate:
						case <-ctx.Done():
							return
						}
					}
					vals, err := it.Input.AppendFloat32s(nil, float32(e.plan.Input.UINT8Scale))
					if err != nil || len(vals) < 3 {
						t.Errorf("responder %s: item %s input %v: %v", model, it.ID, it.Input, err)
					}
					sum := float32(0)
					for _, v := range vals {
						sum += v
					}
					now := time.Now()
					res := &wire.Result{ID: it.ID, Pipeline: it.Pipeline, Client: it.Client,
						Label: int(math.Round(float64(sum))), Confidence: float64(vals[0]), AnsweredBy: model,
						Gear: it.AdmittedGear, AdmittedGear: it.AdmittedGear, Visits: []wire.Visit{{Model: model, Gear: it.AdmittedGear}},
						TotalNs: now.UnixNano() - it.AdmittedUnixNano, AdmittedUnixNano: it.AdmittedUnixNano, CompletedUnixNano: now.UnixNano()}
					if it.ReturnProbabilities {
						res.Probabilities = vals[:3]
					}
					if it.ReplyBatched {
						res.Index = it.BatchIndex // as one result; workers may also group them
					}
					// Encoded as the stage worker does: in the item's result
					// format, with its Content-Type.
					b, contentType, err := codec.EncodeResultAs(res, it.ResultFormat)
					if err != nil {
						t.Error(err)
						continue
					}
					if it.ReplyTo != "" {
						out := nats.NewMsg(it.ReplyTo)
						out.Data = b
						out.Header.Set(wire.HeaderContentType, contentType)
						if err := nc.PublishMsg(out); err != nil {
							t.Error(err)
						}
					}
					if it.Durable {
						out := nats.NewMsg(wire.ResultSubject(pipeline, it.Client))
						out.Data = b
						out.Header.Set(wire.HeaderContentType, contentType)
						if _, err := js.PublishMsg(ctx, out, jetstream.WithMsgID(wire.ResultMsgID(it.Pipeline, it.DedupKey()))); err != nil {
							failed = true
						}
					}
				}
				if failed {
					_ = msg.Nak()
					continue
				}
				_ = msg.Ack()
			}
		}
	}()
	return r
}

func (r *responder) seen() []*wire.Item {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*wire.Item(nil), r.items...)
}

// httpInfer posts an OIP body and returns the status, the decoded result
// (error bodies decode into Result.Error) and the raw body.
func httpInfer(t testing.TB, url, model, body string) (int, *wire.Result, []byte) {
	t.Helper()
	r := rawPost(t, url, "/v2/models/"+model+"/infer", map[string]string{"Content-Type": "application/json"}, []byte(body))
	var res wire.Result
	if err := wire.DecodeOIPResponse(r.body, &res); err != nil {
		t.Fatalf("status %d body %s: %v", r.status, r.body, err)
	}
	if ct := r.header.Get("Content-Type"); ct != wire.ContentTypeJSON {
		t.Errorf("Content-Type %q", ct)
	}
	return r.status, &res, r.body
}

// oipBody builds an OIP request body for the tiny pipeline.
func oipBody(id, datatype, shape, data, params string) string {
	var b bytes.Buffer
	b.WriteString(`{`)
	if id != "" {
		b.WriteString(`"id":"` + id + `",`)
	}
	b.WriteString(`"inputs":[{"name":"x","shape":` + shape + `,"datatype":"` + datatype + `","data":` + data + `}]`)
	if params != "" {
		b.WriteString(`,"parameters":` + params)
	}
	b.WriteString(`}`)
	return b.String()
}

// natsRequest sends a request-reply request and decodes the answer by its
// Content-Type; it returns the result and the Cascade-Error header.
func natsRequest(t testing.TB, nc *nats.Conn, body []byte, asJSON bool) (*wire.Result, string) {
	t.Helper()
	return natsRequestTo(t, nc, pipeline, body, asJSON)
}

func natsRequestTo(t testing.TB, nc *nats.Conn, pipeline string, body []byte, asJSON bool) (*wire.Result, string) {
	t.Helper()
	msg := nats.NewMsg(wire.InferSubject(pipeline))
	msg.Data = body
	res, h := natsRequestMsg(t, nc, msg, asJSON)
	return res, h.Get(wire.HeaderError)
}

// natsRequestMsg sends msg, with Content-Type JSON if asJSON, and decodes
// the answer, which must be in the request's format; it returns the result
// and the answer's headers.
func natsRequestMsg(t testing.TB, nc *nats.Conn, msg *nats.Msg, asJSON bool) (*wire.Result, nats.Header) {
	t.Helper()
	if asJSON {
		msg.Header.Set(wire.HeaderContentType, wire.ContentTypeJSON)
	}
	resp, err := nc.RequestMsg(msg, 20*time.Second)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	var res wire.Result
	if wire.IsJSON(resp.Header.Get(wire.HeaderContentType)) {
		if !asJSON {
			t.Errorf("JSON answer to a msgpack request")
		}
		if err := wire.DecodeOIPResponse(resp.Data, &res); err != nil {
			t.Fatalf("decode JSON answer %s: %v", resp.Data, err)
		}
	} else {
		if asJSON {
			t.Errorf("msgpack answer to a JSON request")
		}
		if err := wire.DecodeResult(resp.Data, &res); err != nil {
			t.Fatalf("decode msgpack answer: %v", err)
		}
	}
	return &res, resp.Header
}

func encodeRequest(t testing.TB, r *wire.Request) []byte {
	t.Helper()
	b, err := wire.NewCodec().EncodeRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// validRequest is a msgpack request whose values sum to 2 (label 2).
func validRequest(id string) *wire.Request {
	return &wire.Request{ID: id, Input: wire.FP32Tensor([]int64{2, 2}, []float32{0.5, 0.5, 0.5, 0.5}), TimeoutMs: 10000}
}

// results reads every result of a client from the results stream, decoded
// by its Content-Type header (which every result must carry).
func (e *testEnv) results(t testing.TB, client string) []*wire.Result {
	t.Helper()
	var out []*wire.Result
	for _, msg := range e.resultMsgs(t, client) {
		ct := msg.Header.Get(wire.HeaderContentType)
		if ct != wire.ContentTypeJSON && ct != wire.ContentTypeMsgpack {
			t.Fatalf("result with Content-Type %q", ct)
		}
		var r wire.Result
		if err := wire.DecodeResultBody(ct, msg.Data, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, &r)
	}
	return out
}

// resultMsgs reads every message of a client from the results stream.
func (e *testEnv) resultMsgs(t testing.TB, client string) []*nats.Msg {
	t.Helper()
	return e.srv.StoredMsgs(t, wire.ResultsStream, wire.ResultSubject(e.plan.Pipeline, client))
}

// testLogger is the logger of the ingress the tests run: warnings and above, to
// the test log.
func testLogger(t testing.TB) *slog.Logger { return natstest.Logger(t, slog.LevelWarn) }
