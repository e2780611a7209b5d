package ingress_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	r := rawGet(t, url)
	if v != nil {
		if err := json.Unmarshal(r.body, v); err != nil {
			t.Fatalf("GET %s: %s: %v", url, r.body, err)
		}
	}
	return r.status
}

// TestHTTPEndpoints: live at once; ready, model ready and metadata only
// once the plan and topology are there; other pipelines are 404.
func TestHTTPEndpoints(t *testing.T) {
	e := startEnv(t)
	ti := e.startIngress(t, nil)
	ti.waitHealth(t, "live", 10*time.Second)
	var errBody wire.OIPError
	for _, path := range []string{"/v2/health/ready", "/v2/models/tiny/ready"} {
		if got := getJSON(t, ti.url+path, nil); got != http.StatusServiceUnavailable {
			t.Errorf("GET %s before the plan = %d, want 503", path, got)
		}
	}
	if got := getJSON(t, ti.url+"/v2/models/tiny", &errBody); got != http.StatusServiceUnavailable || errBody.Code != wire.CodeUnavailable {
		t.Errorf("metadata before the plan = %d %+v, want 503 unavailable", got, errBody)
	}
	if code, res, _ := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")); code != http.StatusServiceUnavailable || res.Error.Code != wire.CodeUnavailable {
		t.Errorf("infer before the plan = %d %+v, want 503 unavailable", code, res.Error)
	}

	e.putGear(t, "fast") // a gear key before the plan is kept for it
	e.putPlan(t)
	ti.waitReady(t)
	for _, path := range []string{"/v2/health/ready", "/v2/models/tiny/ready", "/v2/models/tiny/versions/7/ready", "/v2/health/live"} {
		if got := getJSON(t, ti.url+path, nil); got != http.StatusOK {
			t.Errorf("GET %s = %d, want 200", path, got)
		}
	}
	for _, path := range []string{"/v2/models/other", "/v2/models/other/ready"} {
		if got := getJSON(t, ti.url+path, &errBody); got != http.StatusNotFound || errBody.Code != wire.CodeInvalidInput {
			t.Errorf("GET %s = %d %+v, want 404 invalid_input", path, got, errBody)
		}
	}
	var md struct {
		Name   string `json:"name"`
		Inputs []struct {
			Name       string         `json:"name"`
			Datatype   string         `json:"datatype"`
			Shape      []int64        `json:"shape"`
			Parameters map[string]any `json:"parameters"`
		} `json:"inputs"`
		Outputs []struct {
			Name     string `json:"name"`
			Datatype string `json:"datatype"`
		} `json:"outputs"`
		Ladder  []string       `json:"ladder"`
		Gears   []string       `json:"gears"`
		Gear    wire.GearState `json:"gear"`
		Cascade []struct {
			Model string `json:"model"`
		} `json:"cascade"`
	}
	if got := getJSON(t, ti.url+"/v2/models/tiny", &md); got != http.StatusOK {
		t.Fatalf("metadata = %d", got)
	}
	if md.Name != "tiny" || len(md.Inputs) != 1 || md.Inputs[0].Name != "x" || md.Inputs[0].Datatype != "FP32" ||
		fmt.Sprint(md.Inputs[0].Shape) != "[-1 2 2]" || md.Inputs[0].Parameters["accepted_datatypes"] != "FP32,UINT8" {
		t.Errorf("metadata inputs = %+v", md)
	}
	if len(md.Outputs) != 3 || md.Outputs[0].Name != "label" || md.Outputs[0].Datatype != "INT64" {
		t.Errorf("metadata outputs = %+v", md.Outputs)
	}
	if fmt.Sprint(md.Ladder) != "[small big]" || fmt.Sprint(md.Gears) != "[accurate fast]" || md.Gear.Gear != "fast" ||
		len(md.Cascade) != 1 || md.Cascade[0].Model != "big" {
		t.Errorf("metadata cascade = ladder %v gears %v gear %+v cascade %+v", md.Ladder, md.Gears, md.Gear, md.Cascade)
	}
	if got := ti.counter(t, "cascade_ingress_ready"); got != 1 {
		t.Errorf("cascade_ingress_ready = %v", got)
	}
	resp, err := http.Post(ti.url+"/v2/health/ready", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST ready = %d, want 405", resp.StatusCode)
	}
}

// TestHTTPInfer serves valid requests (FP32 flat and nested, UINT8) and a
// range of invalid ones at the same time: each invalid one gets its typed
// error, every valid one its result, and only valid ones reach the queue.
func TestHTTPInfer(t *testing.T) {
	e := startEnv(t)
	ti := e.ready(t, func(c *ingress.Config) { c.MaxBodyBytes = 2048 })
	small := e.respond(t, "small")

	type tc struct {
		name   string
		model  string
		body   string
		status int
		code   wire.Code
		label  int
		probs  bool
	}
	valid := []tc{
		{name: "FP32 flat", body: oipBody("", "FP32", "[2,2]", "[0.25,0.25,0.25,0.25]", ""), status: 200, label: 1},
		{name: "FP32 nested with batch axis", body: oipBody("", "FP32", "[1,2,2]", "[[[1,0.5],[0.5,1]]]", `{"timeout_ms":10000}`), status: 200, label: 3},
		{name: "UINT8 scaled", body: oipBody("", "UINT8", "[2,2]", "[2,2,2,2]", `{"return_probabilities":true,"client":"web"}`), status: 200, label: 4, probs: true},
		{name: "with id", body: oipBody("http-id-1", "FP32", "[2,2]", "[0,0,0,0]", ""), status: 200, label: 0},
	}
	invalid := []tc{
		{name: "malformed JSON", body: `{"inputs": [`, status: 400, code: wire.CodeInvalidInput},
		{name: "two inputs", body: `{"inputs":[]}`, status: 400, code: wire.CodeInvalidInput},
		{name: "wrong shape", body: oipBody("", "FP32", "[4]", "[1,1,1,1]", ""), status: 400, code: wire.CodeInvalidInput},
		{name: "wrong length", body: oipBody("", "FP32", "[2,2]", "[1,1,1]", ""), status: 400, code: wire.CodeInvalidInput},
		{name: "wrong datatype", body: oipBody("", "INT32", "[2,2]", "[1,1,1,1]", ""), status: 400, code: wire.CodeInvalidInput},
		{name: "UINT8 out of range", body: oipBody("", "UINT8", "[2,2]", "[1,1,1,300]", ""), status: 400, code: wire.CodeInvalidInput},
		{name: "string data", body: oipBody("", "FP32", "[2,2]", `["a","b","c","d"]`, ""), status: 400, code: wire.CodeInvalidInput},
		{name: "invalid id", body: oipBody("no spaces allowed", "FP32", "[2,2]", "[1,1,1,1]", ""), status: 400, code: wire.CodeInvalidInput},
		{name: "invalid client", body: oipBody("", "FP32", "[2,2]", "[1,1,1,1]", `{"client":"a.b"}`), status: 400, code: wire.CodeInvalidInput},
		{name: "negative timeout", body: oipBody("", "FP32", "[2,2]", "[1,1,1,1]", `{"timeout_ms":-1}`), status: 400, code: wire.CodeInvalidInput},
		{name: "deadline past", body: oipBody("", "FP32", "[2,2]", "[1,1,1,1]", `{"deadline_unix_ms":1000}`), status: 504, code: wire.CodeDeadlineExceeded},
		{name: "oversized", body: oipBody("", "FP32", "[2,2]", "["+strings.Repeat("0,", 1100)+"0]", ""), status: 413, code: wire.CodeInvalidInput},
		{name: "unknown pipeline", model: "other", body: oipBody("", "FP32", "[2,2]", "[1,1,1,1]", ""), status: 404, code: wire.CodeInvalidInput},
	}
	var wg sync.WaitGroup
	for round := range 3 {
		for _, c := range append(append([]tc{}, invalid...), valid...) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				model := c.model
				if model == "" {
					model = pipeline
				}
				body := c.body
				if round > 0 {
					body = strings.Replace(body, `"id":"http-id-1"`, fmt.Sprintf(`"id":"http-id-1-%d"`, round), 1)
				}
				status, res, raw := httpInfer(t, ti.url, model, body)
				if status != c.status {
					t.Errorf("%s: status %d, want %d (%s)", c.name, status, c.status, raw)
					return
				}
				if c.code != "" {
					if res.Error == nil || res.Error.Code != c.code || res.Error.Message == "" {
						t.Errorf("%s: error %+v, want code %s", c.name, res.Error, c.code)
					}
					return
				}
				if res.Error != nil || res.Label != c.label || res.AnsweredBy != "small" || res.Gear != "accurate" || res.ID == "" {
					t.Errorf("%s: result %+v (%s)", c.name, res, raw)
				}
				if (len(res.Probabilities) == 3) != c.probs {
					t.Errorf("%s: probabilities %v", c.name, res.Probabilities)
				}
			}()
		}
	}
	wg.Wait()
	// Only the valid requests reached the first stage.
	if got, want := len(small.seen()), 3*len(valid); got != want {
		t.Errorf("first stage saw %d items, want %d", got, want)
	}
	for _, it := range small.seen() {
		if it.Pipeline != pipeline || it.AdmittedGear != "accurate" || it.Durable || !strings.HasPrefix(it.ReplyTo, "_INBOX.") ||
			it.DeadlineUnixNano <= it.AdmittedUnixNano || (it.Input.Datatype != wire.FP32 && it.Input.Datatype != wire.UINT8) || fmt.Sprint(it.Input.Shape) != "[2 2]" {
			t.Errorf("item %+v", it)
		}
		if it.Client != wire.DefaultClient && it.Client != "web" {
			t.Errorf("item %s client %q", it.ID, it.Client)
		}
	}
	if got := ti.counter(t, "cascade_ingress_requests_total", "door", "http", "outcome", "admitted"); got != float64(3*len(valid)) {
		t.Errorf("admitted counter = %v", got)
	}
	if got := ti.counter(t, "cascade_ingress_requests_total", "door", "http", "outcome", "invalid_input"); got != float64(3*(len(invalid)-1)) {
		t.Errorf("invalid_input counter = %v, want %d", got, 3*(len(invalid)-1))
	}
	if got := ti.counter(t, "cascade_ingress_http_in_flight_requests"); got != 0 {
		t.Errorf("in flight after all answers = %v", got)
	}
}

// TestNATSRequestReply: msgpack and JSON bodies over request-reply; bad
// ones get an immediate typed error in their own encoding with the
// Cascade-Error header, while valid ones sent at the same time succeed.
func TestNATSRequestReply(t *testing.T) {
	e := startEnv(t)
	e.ready(t, func(c *ingress.Config) { c.MaxBodyBytes = 2048 })
	small := e.respond(t, "small")
	nc := e.srv.Connect(t)

	nan := validRequest("")
	nan.Input = wire.FP32Tensor([]int64{2, 2}, []float32{1, 1, float32(nanValue()), 1})
	badShape := validRequest("")
	badShape.Input.Shape = []int64{4}
	huge := validRequest("")
	huge.Input = wire.FP32Tensor([]int64{2, 2}, make([]float32, 1000))
	future := validRequest("")
	future.V = 99
	futureBody, err := msgpack.Marshal(future) // the codec would stamp the current version
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		body   []byte
		asJSON bool
		code   wire.Code
		label  int
	}{
		{name: "msgpack", body: encodeRequest(t, validRequest("")), label: 2},
		{name: "msgpack with id", body: encodeRequest(t, validRequest("nats-id-1")), label: 2},
		{name: "JSON", body: []byte(oipBody("", "FP32", "[2,2]", "[1,1,1,0]", "")), asJSON: true, label: 3},
		{name: "JSON UINT8", body: []byte(oipBody("json-u8", "UINT8", "[1,2,2]", "[[[2,2],[2,0]]]", "")), asJSON: true, label: 3},
		{name: "malformed msgpack", body: []byte{0xc1, 0x00}, code: wire.CodeInvalidInput},
		{name: "JSON without the header", body: []byte(oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")), code: wire.CodeInvalidInput},
		{name: "malformed JSON", body: []byte(`{"inputs":`), asJSON: true, code: wire.CodeInvalidInput},
		{name: "NaN", body: encodeRequest(t, nan), code: wire.CodeInvalidInput},
		{name: "wrong shape", body: encodeRequest(t, badShape), code: wire.CodeInvalidInput},
		{name: "oversized", body: encodeRequest(t, huge), code: wire.CodeInvalidInput},
		{name: "future version", body: futureBody, code: wire.CodeInvalidInput},
		{name: "JSON wrong datatype", body: []byte(oipBody("", "BOOL", "[2,2]", "[1,1,1,1]", "")), asJSON: true, code: wire.CodeInvalidInput},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			res, hdr := natsRequest(t, nc, c.body, c.asJSON)
			if c.code != "" {
				if res.Error == nil || res.Error.Code != c.code || hdr != string(c.code) {
					t.Fatalf("answer %+v header %q, want error %s", res, hdr, c.code)
				}
				return
			}
			if res.Error != nil || hdr != "" || res.Label != c.label || res.AnsweredBy != "small" {
				t.Fatalf("answer %+v header %q, want label %d", res, hdr, c.label)
			}
		})
	}
	t.Run("no reply subject", func(t *testing.T) {
		// A plain publish is counted and dropped; nothing reaches a queue.
		before := len(small.seen())
		if err := nc.Publish(wire.InferSubject(pipeline), encodeRequest(t, validRequest(""))); err != nil {
			t.Fatal(err)
		}
		res, _ := natsRequest(t, nc, encodeRequest(t, validRequest("")), false)
		if res.Error != nil {
			t.Fatal(res.Error)
		}
		if got := len(small.seen()); got != before+1 {
			t.Fatalf("first stage saw %d new items, want 1", got-before)
		}
	})
}

func nanValue() float64 { var z float64; return z / z }

// TestOverloaded: a full first queue (DiscardNew) is answered overloaded
// on every door, never dropped; once the queue drains requests succeed.
func TestOverloaded(t *testing.T) {
	e := startEnvWith(t, natsbus.TopologyConfig{MaxQueue: 2})
	ti := e.ready(t, nil)
	ctx := context.Background()
	for i := range 2 {
		if _, err := e.srv.JS.Publish(ctx, wire.ModelSubject(pipeline, "small"), []byte(fmt.Sprint("filler", i))); err != nil {
			t.Fatal(err)
		}
	}
	nc := e.srv.Connect(t)

	resp, err := http.Post(ti.url+"/v2/models/tiny/infer", "application/json", strings.NewReader(oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var eb wire.OIPError
	if err := json.Unmarshal(b, &eb); err != nil || resp.StatusCode != http.StatusTooManyRequests || eb.Code != wire.CodeOverloaded || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("HTTP on a full queue: %d %s %v Retry-After %q", resp.StatusCode, b, err, resp.Header.Get("Retry-After"))
	}
	if res, hdr := natsRequest(t, nc, encodeRequest(t, validRequest("")), false); res.Error == nil || res.Error.Code != wire.CodeOverloaded || hdr != "overloaded" {
		t.Fatalf("NATS msgpack on a full queue: %+v %q", res.Error, hdr)
	}
	if res, hdr := natsRequest(t, nc, []byte(oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")), true); res.Error == nil || res.Error.Code != wire.CodeOverloaded || hdr != "overloaded" {
		t.Fatalf("NATS JSON on a full queue: %+v %q", res.Error, hdr)
	}
	if got := e.srv.StreamMsgs(t, wire.ModelStream(pipeline, "small")); got != 2 {
		t.Fatalf("queue holds %d messages, want the 2 fillers", got)
	}
	if got := ti.counter(t, "cascade_ingress_requests_total", "door", "nats", "outcome", "overloaded"); got != 2 {
		t.Errorf("nats overloaded counter = %v", got)
	}
	if got := ti.counter(t, "cascade_ingress_requests_total", "door", "http", "outcome", "overloaded"); got != 1 {
		t.Errorf("http overloaded counter = %v", got)
	}

	// Drain the queue: the same requests now succeed.
	s, err := e.srv.JS.Stream(ctx, wire.ModelStream(pipeline, "small"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	e.respond(t, "small")
	if code, res, raw := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")); code != 200 || res.Label != 4 {
		t.Fatalf("after drain: %d %s", code, raw)
	}
	if res, _ := natsRequest(t, nc, encodeRequest(t, validRequest("")), false); res.Error != nil || res.Label != 2 {
		t.Fatalf("after drain: %+v", res)
	}
}

// TestIDIsACorrelationID: a client-supplied id is echoed in its result,
// not a key: the same id again, on any door, is a new request with its own
// answer (a client retrying after a timeout gets its result).
func TestIDIsACorrelationID(t *testing.T) {
	e := startEnv(t)
	ti := e.ready(t, nil)
	small := e.respond(t, "small")
	nc := e.srv.Connect(t)

	body := oipBody("order-42", "FP32", "[2,2]", "[1,1,0,0]", "")
	for range 2 {
		if code, res, raw := httpInfer(t, ti.url, pipeline, body); code != 200 || res.ID != "order-42" || res.Label != 2 {
			t.Fatalf("HTTP: %d %s", code, raw)
		}
	}
	for range 2 {
		if res, hdr := natsRequest(t, nc, encodeRequest(t, validRequest("order-42")), false); res.Error != nil || hdr != "" || res.ID != "order-42" || res.Label != 2 {
			t.Fatalf("NATS: %+v %q", res, hdr)
		}
	}
	keys := map[string]bool{}
	for _, it := range small.seen() {
		if it.ID != "order-42" {
			t.Errorf("first stage saw id %q", it.ID)
		}
		keys[it.Key] = true
	}
	if len(small.seen()) != 4 || len(keys) != 4 {
		t.Fatalf("first stage saw %d items with %d keys, want 4 admissions with a key each", len(small.seen()), len(keys))
	}
	if got := ti.counter(t, "cascade_ingress_requests_total", "outcome", "duplicate"); got != 0 {
		t.Errorf("duplicate counter = %v, want 0", got)
	}
}

// startInAccurate starts an ingress in gear accurate (first model small)
// with a responder of each model.
func startInAccurate(t *testing.T) (e *testEnv, ti *testIngress, small, big *responder) {
	t.Helper()
	e = startEnv(t)
	e.putGear(t, "accurate")
	ti = e.ready(t, nil)
	return e, ti, e.respond(t, "small"), e.respond(t, "big")
}

// TestGearSwitch: requests go to the first model of the gear in force.
func TestGearSwitch(t *testing.T) {
	e, ti, small, big := startInAccurate(t)
	body := oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")
	if _, res, _ := httpInfer(t, ti.url, pipeline, body); res.AnsweredBy != "small" || res.AdmittedGear != "accurate" {
		t.Fatalf("before the switch: %+v", res)
	}
	e.putGear(t, "fast")
	natstest.WaitFor(t, "gear fast applied", 10*time.Second, func() bool { return ti.counter(t, "cascade_ingress_gear_index") == 1 })
	if _, res, _ := httpInfer(t, ti.url, pipeline, body); res.AnsweredBy != "big" || res.AdmittedGear != "fast" {
		t.Fatalf("after the switch: %+v", res)
	}
	e.putGear(t, "no-such-gear") // unknown: back to the first gear
	natstest.WaitFor(t, "fallback to gear 0", 10*time.Second, func() bool { return ti.counter(t, "cascade_ingress_gear_index") == 0 })
	if _, res, _ := httpInfer(t, ti.url, pipeline, body); res.AnsweredBy != "small" {
		t.Fatalf("after an unknown gear: %+v", res)
	}
	if len(small.seen()) != 2 || len(big.seen()) != 1 {
		t.Fatalf("small saw %d, big %d; want 2 and 1", len(small.seen()), len(big.seen()))
	}
}

// TestGearSwitchAfterBucketRecreated: when the control bucket is deleted
// and created again (the controller re-applying a vanished topology), the
// ingress keeps admitting with its last gear meanwhile, and then follows
// the gear written into the new bucket.
func TestGearSwitchAfterBucketRecreated(t *testing.T) {
	e, ti, small, big := startInAccurate(t)
	body := oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.srv.JS.DeleteKeyValue(ctx, wire.KVBucket(pipeline)); err != nil {
		t.Fatal(err)
	}
	if _, res, _ := httpInfer(t, ti.url, pipeline, body); res.AnsweredBy != "small" || res.AdmittedGear != "accurate" {
		t.Fatalf("without a bucket: %+v, want the last gear accurate", res)
	}
	e.kv = e.srv.Topology(t, e.plan, natsbus.TopologyConfig{})
	e.putPlan(t)
	e.putGear(t, "fast")
	natstest.WaitFor(t, "gear fast applied from the new bucket", 20*time.Second, func() bool { return ti.counter(t, "cascade_ingress_gear_index") == 1 })
	if _, res, _ := httpInfer(t, ti.url, pipeline, body); res.AnsweredBy != "big" || res.AdmittedGear != "fast" {
		t.Fatalf("after the switch: %+v", res)
	}
	if len(small.seen()) != 1 || len(big.seen()) != 1 {
		t.Fatalf("small saw %d, big %d; want 1 and 1", len(small.seen()), len(big.seen()))
	}
}

// TestStats: the cumulative counters are published periodically on the
// instance's stats subject.
func TestStats(t *testing.T) {
	e := startEnv(t)
	nc := e.srv.Connect(t)
	stats := make(chan wire.IngressStats, 1000)
	sub, err := nc.Subscribe(wire.StatsWildcard(pipeline), func(m *nats.Msg) {
		var s wire.IngressStats
		if err := json.Unmarshal(m.Data, &s); err != nil {
			t.Error(err)
		}
		if m.Subject != wire.StatsSubject(pipeline, s.Instance) {
			t.Errorf("stats of %q on %s", s.Instance, m.Subject)
		}
		select {
		case stats <- s:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	ti := e.ready(t, func(c *ingress.Config) { c.Instance = "stats-test" })
	e.respond(t, "small")
	for range 3 {
		if code, _, raw := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")); code != 200 {
			t.Fatalf("%d %s", code, raw)
		}
	}
	httpInfer(t, ti.url, pipeline, `{}`)
	var last wire.IngressStats
	natstest.WaitFor(t, "stats with 3 admitted and 1 rejected", 10*time.Second, func() bool {
		for {
			select {
			case last = <-stats:
				if last.Admitted == 3 && last.Rejected == 1 {
					return true
				}
			default:
				return false
			}
		}
	})
	if last.Instance != "stats-test" || last.AtUnixNano == 0 {
		t.Fatalf("stats = %+v", last)
	}
}

// TestTwoInstances: instances share the request subject as a queue group
// (each request is admitted once) and register metrics in their own
// registries.
func TestTwoInstances(t *testing.T) {
	e := startEnv(t)
	a := e.ready(t, func(c *ingress.Config) { c.Instance = "a" })
	b := e.startIngress(t, func(c *ingress.Config) { c.Instance = "b" })
	b.waitReady(t)
	small := e.respond(t, "small")
	nc := e.srv.Connect(t)
	const n = 20
	for i := range n {
		if res, _ := natsRequest(t, nc, encodeRequest(t, validRequest(fmt.Sprint("two-", i))), false); res.Error != nil {
			t.Fatal(res.Error)
		}
	}
	admitted := func(ti *testIngress) float64 {
		return ti.counter(t, "cascade_ingress_requests_total", "door", "nats", "outcome", "admitted")
	}
	// A msgpack caller's result comes from the first stage and can arrive
	// before the admitting ingress counts the admission: poll.
	deadline := time.Now().Add(10 * time.Second)
	for admitted(a)+admitted(b) != n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := admitted(a) + admitted(b); got != n {
		t.Fatalf("instances admitted %v + %v, want %d in all", admitted(a), admitted(b), n)
	}
	if len(small.seen()) != n {
		t.Fatalf("first stage saw %d items, want %d", len(small.seen()), n)
	}
	for _, ti := range []*testIngress{a, b} {
		if code, _, raw := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")); code != 200 {
			t.Fatalf("%d %s", code, raw)
		}
	}
}

func TestRunRejectsBadDeps(t *testing.T) {
	cfg := testConfig(t)
	if err := ingress.Run(context.Background(), cfg, ingress.Deps{}); err == nil {
		t.Error("Run without a NATS connection succeeded")
	}
	cfg.MaxInFlight = 0
	if err := ingress.Run(context.Background(), cfg, ingress.Deps{}); !errors.Is(err, ingress.ErrInvalidConfig) {
		t.Errorf("Run with an invalid config = %v", err)
	}
}

// TestBatchedRequest: an input of shape [N, item shape] is N items, each
// cascaded on its own, answered in one result with Items in input order; a
// bad row gets its own typed error and its neighbours are answered.
// TestBatchedRequestTravelsTogether: a batched request's items share
// envelopes, filled up to the first stage's max batch (8 in gear
// "accurate"), instead of the first item leaving alone while the others
// are admitted.
func TestBatchedRequestTravelsTogether(t *testing.T) {
	e := startEnv(t)
	e.ready(t, nil)
	small := e.respond(t, "small")
	nc := e.srv.Connect(t)
	for _, n := range []int{6, 20} {
		rows := make([]float32, 4*n)
		req := &wire.Request{Input: wire.FP32Tensor([]int64{int64(n), 2, 2}, rows)}
		res, _ := natsRequest(t, nc, encodeRequest(t, req), false)
		if res.Error != nil || len(res.Items) != n {
			t.Fatalf("batch of %d: %+v", n, res)
		}
	}
	small.mu.Lock()
	defer small.mu.Unlock()
	// 6 items: one envelope; 20: 8 + 8, then the remaining 4.
	if want := []int{6, 8, 8, 4}; !slices.Equal(small.envelopes, want) {
		t.Errorf("envelope sizes %v, want %v", small.envelopes, want)
	}
}

func TestBatchedRequest(t *testing.T) {
	e := startEnv(t)
	e.ready(t, nil)
	small := e.respond(t, "small")
	nc := e.srv.Connect(t)
	rows := []float32{1, 0, 0, 0, float32(nanValue()), 0, 0, 0, 1, 1, 1, 0}
	req := &wire.Request{ID: "batch-7", Input: wire.FP32Tensor([]int64{3, 2, 2}, rows), Client: "web"}
	res, hdr := natsRequest(t, nc, encodeRequest(t, req), false)
	if res.Error != nil || hdr != "" || res.ID != "batch-7" || len(res.Items) != 3 {
		t.Fatalf("batch result %+v %q", res, hdr)
	}
	if r := res.Items[0]; r.Error != nil || r.Label != 1 || r.ID != "batch-7" {
		t.Errorf("item 0: %+v", r)
	}
	if r := res.Items[1]; r.Error == nil || r.Error.Code != wire.CodeInvalidInput {
		t.Errorf("item 1 (NaN): %+v, want invalid_input", r)
	}
	if r := res.Items[2]; r.Error != nil || r.Label != 3 {
		t.Errorf("item 2: %+v", r)
	}
	if n := len(small.seen()); n != 2 {
		t.Errorf("first stage saw %d items, want the 2 valid rows", n)
	}
	// A wrong size for the claimed batch refuses the whole request.
	bad := &wire.Request{Input: wire.FP32Tensor([]int64{3, 2, 2}, rows[:8])}
	if res, _ := natsRequest(t, nc, encodeRequest(t, bad), false); res.Error == nil || res.Error.Code != wire.CodeInvalidInput {
		t.Errorf("short batch: %+v", res)
	}
}
