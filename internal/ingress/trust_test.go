package ingress_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// TestReplySubjectsAreInboxesOnly: a request-reply message whose reply
// subject is not an inbox makes the ingress publish nothing: not into a
// victim's results, not over the plan or gear key, not into a model's
// queue. The victim's own later job with the same id gets its real result.
func TestReplySubjectsAreInboxesOnly(t *testing.T) {
	e := startEnv(t)
	ti := e.ready(t, nil)
	small := e.respond(t, "small")
	nc := e.srv.Connect(t)
	ctx := context.Background()
	revision := func(key string) uint64 {
		t.Helper()
		en, err := e.kv.Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		return en.Revision()
	}
	e.putGear(t, "accurate")
	planRev, gearRev := revision(wire.KeyPlan), revision(wire.KeyGear)

	valid := encodeRequest(t, validRequest("victim-1"))
	cases := []struct {
		name, reply string
		body        []byte
		json        bool
	}{
		{"forged result into a victim's results", wire.ResultSubject(pipeline, "victim"), valid, false},
		{"invalid JSON over the plan key", "$KV." + wire.KVBucket(pipeline) + "." + wire.KeyPlan, []byte("{not json"), true},
		{"invalid JSON over the gear key", "$KV." + wire.KVBucket(pipeline) + "." + wire.KeyGear, []byte("{not json"), true},
		{"valid request into a model's queue", wire.ModelSubject(pipeline, "small"), valid, false},
		{"JetStream API", "$JS.API.STREAM.DELETE." + wire.JobsStream(pipeline), valid, false},
		{"wildcard inbox", "_INBOX.>", valid, false},
	}
	for _, c := range cases {
		msg := nats.NewMsg(wire.InferSubject(pipeline))
		msg.Reply, msg.Data = c.reply, c.body
		if c.json {
			msg.Header.Set(wire.HeaderContentType, wire.ContentTypeJSON)
		}
		if err := nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, "every refusal counted", 10*time.Second, func() bool {
		return ti.counter(t, "cascade_ingress_refused_replies_total") == float64(len(cases))
	})
	// A valid request still works meanwhile.
	if res, _ := natsRequest(t, nc, encodeRequest(t, validRequest("")), false); res.Error != nil || res.Label != 2 {
		t.Fatalf("valid request: %+v", res)
	}
	if got := revision(wire.KeyPlan); got != planRev {
		t.Errorf("plan key revision %d, want %d: something was written over the plan", got, planRev)
	}
	if got := revision(wire.KeyGear); got != gearRev {
		t.Errorf("gear key revision %d, want %d", got, gearRev)
	}
	// The queue takes items in order, and the responder records each item
	// before it answers: when the valid request has its answer, anything
	// enqueued before it has been seen too. Counting the stream's messages
	// instead would race the responder's ack of the valid request.
	if seen := small.seen(); len(seen) != 1 || seen[0].ID == "victim-1" {
		ids := make([]string, len(seen))
		for i, it := range seen {
			ids[i] = it.ID
		}
		t.Errorf("the model's queue carried items %v, want only the valid request's", ids)
	}
	if _, err := e.srv.JS.Stream(ctx, wire.JobsStream(pipeline)); err != nil {
		t.Errorf("jobs stream: %v", err)
	}
	if got := e.results(t, "victim"); len(got) != 0 {
		t.Fatalf("victim's results hold %d forged results", len(got))
	}
	// The victim's own job with that id gets its real result.
	e.publishJob(t, "victim", valid, false, "")
	natstest.WaitFor(t, "victim's result", 20*time.Second, func() bool { return len(e.results(t, "victim")) == 1 })
	if r := e.results(t, "victim")[0]; r.ID != "victim-1" || r.Error != nil || r.Label != 2 {
		t.Fatalf("victim's result %+v", r)
	}
}

// TestJobsConsumerDeletedUnderLoad: deleting the jobs consumer while jobs
// arrive makes the ingress unready and counts the loss; once the consumer
// is back (the controller's topology repair, here EnsureTopology) every
// accepted job gets exactly one result. An ingress started while the
// consumer is missing waits for it instead of exiting.
func TestJobsConsumerDeletedUnderLoad(t *testing.T) {
	e := startEnv(t)
	ti := e.ready(t, func(c *ingress.Config) { c.HTTPAddr = "127.0.0.1:0" })
	e.respond(t, "small")
	ctx := context.Background()
	jobs, err := e.srv.JS.Stream(ctx, wire.JobsStream(pipeline))
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	var published atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			e.publishJob(t, "load", encodeRequest(t, validRequest("")), false, "")
			published.Add(1)
			if i%10 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	natstest.WaitFor(t, "some jobs published", 10*time.Second, func() bool { return published.Load() >= n/4 })
	if err := jobs.DeleteConsumer(ctx, wire.JobsConsumer); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, "ingress unready", 10*time.Second, func() bool {
		return getJSON(t, ti.url+"/v2/health/ready", nil) == http.StatusServiceUnavailable
	})
	if got := ti.counter(t, "cascade_ingress_jobs_consumer_lost_total"); got < 1 {
		t.Errorf("jobs consumer lost counter = %v", got)
	}
	if got := ti.counter(t, "cascade_ingress_ready"); got != 0 {
		t.Errorf("cascade_ingress_ready = %v while the jobs consumer is missing", got)
	}
	// A second ingress started now waits instead of exiting.
	second := e.startIngress(t, nil)
	wg.Wait()
	e.srv.Topology(t, e.plan, natsbus.TopologyConfig{})
	natstest.WaitFor(t, "ingress ready again", 10*time.Second, func() bool {
		return getJSON(t, ti.url+"/v2/health/ready", nil) == http.StatusOK
	})
	second.waitReady(t)
	natstest.WaitFor(t, "one result per job", 30*time.Second, func() bool { return len(e.results(t, "load")) >= n })
	seen := map[string]int{}
	for _, r := range e.results(t, "load") {
		seen[r.ID]++
		if r.Error != nil {
			t.Errorf("job %s: %v", r.ID, r.Error)
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct job results, want %d", len(seen), n)
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("job %s: %d results", id, k)
		}
	}
	select {
	case <-second.stopped:
		t.Fatalf("the second ingress exited: %v", second.err)
	default:
	}
}

// TestOverloadAnswersEveryRequest: load far beyond what intake can serve
// (4 requests in flight, offered at 40,000 requests/s for one second, about
// 10× what it serves) gets an answer for every request, a result or
// `overloaded`: the ingress sheds at half its pending limits (the defaults)
// before the NATS client library would drop requests silently.
func TestOverloadAnswersEveryRequest(t *testing.T) {
	e := startEnv(t)
	ti := e.ready(t, func(c *ingress.Config) {
		c.MaxInFlight = 4
	})
	e.respond(t, "small")
	nc := e.srv.Connect(t)
	const n, rate = 40000, 40000 // requests, per second
	inbox := nats.NewInbox()
	var answered, overloaded, other atomic.Int64
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		var res wire.Result
		switch err := wire.DecodeResult(m.Data, &res); {
		case err != nil:
			other.Add(1)
		case res.Error == nil:
			answered.Add(1)
		case res.Error.Code == wire.CodeOverloaded:
			overloaded.Add(1)
		default:
			other.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	body := encodeRequest(t, validRequest(""))
	start := time.Now()
	const chunk = rate / 100 // every 10ms
	for i := range n {
		if i%chunk == 0 {
			time.Sleep(time.Until(start.Add(time.Duration(i/chunk) * 10 * time.Millisecond)))
		}
		if err := nc.PublishRequest(wire.InferSubject(pipeline), inbox+".r"+itoa(i), body); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	offered := time.Since(start)
	total := func() int64 { return answered.Load() + overloaded.Load() + other.Load() }
	deadline := time.Now().Add(30 * time.Second)
	for total() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	silent := n - total()
	t.Logf("offered %d requests in %v; answered %d, overloaded %d, other %d, silent %d; shed %v+%v, dropped by the client %v",
		n, offered.Round(time.Millisecond), answered.Load(), overloaded.Load(), other.Load(), silent,
		ti.counter(t, "cascade_ingress_shed_requests_total", "reason", "backlog"),
		ti.counter(t, "cascade_ingress_shed_requests_total", "reason", "in_flight"),
		ti.counter(t, "cascade_ingress_dropped_requests_total"))
	if silent != 0 || other.Load() != 0 {
		t.Errorf("%d requests got no answer and %d an unexpected one", silent, other.Load())
	}
	if overloaded.Load() == 0 || answered.Load() == 0 {
		t.Errorf("answered %d, overloaded %d: want both (the burst must overload intake)", answered.Load(), overloaded.Load())
	}
	if got := ti.counter(t, "cascade_ingress_dropped_requests_total"); got != 0 {
		t.Errorf("the client dropped %v requests", got)
	}
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{digits[i%10]}, b...)
	}
	return string(b)
}

// TestHTTPBearerToken: with CASCADE_HTTP_BEARER_TOKEN set, inference needs
// the token; the health probes do not.
func TestHTTPBearerToken(t *testing.T) {
	e := startEnv(t)
	const token = "s3cret-token-for-tests"
	ti := e.ready(t, func(c *ingress.Config) { c.HTTP.BearerToken = token })
	e.respond(t, "small")
	if code, _, _ := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")); code != http.StatusUnauthorized {
		t.Errorf("infer without the token = %d, want 401", code)
	}
	if got := getJSON(t, ti.url+"/v2/health/ready", nil); got != http.StatusOK {
		t.Errorf("ready probe without the token = %d, want 200", got)
	}
	req, _ := http.NewRequest(http.MethodPost, ti.url+"/v2/models/"+pipeline+"/infer", strings.NewReader(oipBody("", "FP32", "[2,2]", "[1,1,1,1]", "")))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("infer with the token = %d, want 200", resp.StatusCode)
	}
}
