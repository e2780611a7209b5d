package ingress_test

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// keyedRequest sends a request-reply request with an Idempotency-Key and
// returns the decoded answer and the reply's headers.
func keyedRequest(t *testing.T, nc *nats.Conn, key string, body []byte, asJSON bool) (*wire.Result, nats.Header) {
	t.Helper()
	msg := nats.NewMsg(wire.InferSubject(pipeline))
	msg.Data = body
	msg.Header.Set(wire.HeaderIdempotencyKey, key)
	return natsRequestMsg(t, nc, msg, asJSON)
}

// TestNATSIdempotencyKey: the Idempotency-Key NATS header, on msgpack
// (one item and batches: keyed requests are answered by the ingress, which
// keeps the result) and JSON bodies. A repeat, concurrent or later, gets
// the first result with Idempotent-Replayed: true, and the first stage
// sees each keyed request once.
func TestNATSIdempotencyKey(t *testing.T) {
	e := startEnv(t)
	ti := e.ready(t, nil)
	small := e.respond(t, "small")
	nc := e.srv.Connect(t)

	batch := &wire.Request{ID: "nb", Input: wire.FP32Tensor([]int64{2, 2, 2}, []float32{1, 0, 0, 0, 1, 1, 0, 0}), TimeoutMs: 10000}
	for _, c := range []struct {
		name   string
		body   []byte
		asJSON bool
		items  int
	}{
		{name: "msgpack", body: encodeRequest(t, validRequest("m-1"))},
		{name: "msgpack batch", body: encodeRequest(t, batch), items: 2},
		{name: "JSON", body: []byte(oipBody("j-1", "FP32", "[2,2]", "[1,1,1,0]", "")), asJSON: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(small.seen())
			key := "nats-" + strings.ReplaceAll(c.name, " ", "-")
			// Three at once: exactly one is admitted.
			var wg sync.WaitGroup
			results := make([]*wire.Result, 3)
			headers := make([]nats.Header, 3)
			for i := range results {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i], headers[i] = keyedRequest(t, nc, key, c.body, c.asJSON)
				}()
			}
			wg.Wait()
			replayed := 0
			for i, res := range results {
				if res.Error != nil || headers[i].Get(wire.HeaderError) != "" {
					t.Fatalf("answer %d: %+v", i, res)
				}
				if headers[i].Get(wire.HeaderIdempotentReplayed) == "true" {
					replayed++
				}
				if !reflect.DeepEqual(res, results[0]) {
					t.Errorf("answer %d differs:\n%+v\n%+v", i, res, results[0])
				}
			}
			if replayed != 2 {
				t.Errorf("%d answers replayed, want 2", replayed)
			}
			if len(results[0].Items) != c.items {
				t.Errorf("%d items, want %d", len(results[0].Items), c.items)
			}
			want := max(c.items, 1)
			if got := len(small.seen()) - before; got != want {
				t.Errorf("first stage saw %d items, want %d", got, want)
			}
			// Later, the same.
			res, h := keyedRequest(t, nc, key, c.body, c.asJSON)
			if h.Get(wire.HeaderIdempotentReplayed) != "true" || !reflect.DeepEqual(res, results[0]) {
				t.Errorf("later repeat: %+v %v", res, h)
			}
		})
	}
	// The keyed msgpack item went through the ingress, not straight from
	// the worker to the caller.
	for _, it := range small.seen() {
		if it.ID == "m-1" && it.ReplyTo == "" {
			t.Errorf("item %+v has no reply subject", it)
		}
	}
	if got := ti.counter(t, "cascade_ingress_requests_total", "door", "nats", "outcome", "replayed"); got != 9 {
		t.Errorf("replayed counter = %v, want 9", got)
	}
	// A bad key is refused in the request's encoding.
	res, h := keyedRequest(t, nc, "bad key", encodeRequest(t, validRequest("")), false)
	if res.Error == nil || res.Error.Code != wire.CodeInvalidInput || h.Get(wire.HeaderError) != string(wire.CodeInvalidInput) {
		t.Errorf("bad key: %+v %v", res, h)
	}
}

// TestIdempotencyRecordsOfLostRequests: a record left pending by an
// ingress that died is taken over once it is stale, and the request is
// admitted; a record whose result could not be kept answers duplicate.
func TestIdempotencyRecordsOfLostRequests(t *testing.T) {
	e := startEnv(t)
	e.ready(t, nil)
	small := e.respond(t, "small")
	nc := e.srv.Connect(t)
	ctx := context.Background()
	kv, err := e.srv.JS.KeyValue(ctx, wire.IdempotencyBucket(pipeline))
	if err != nil {
		t.Fatal(err)
	}
	req := validRequest("lost")
	put := func(key string, rec map[string]any) {
		t.Helper()
		rec["key"], rec["fingerprint"] = key, ingress.Fingerprint(req)
		b, _ := json.Marshal(rec)
		if _, err := kv.Put(ctx, wire.IdempotencyRecordKey(wire.DefaultClient, key), b); err != nil {
			t.Fatal(err)
		}
	}
	put("crashed", map[string]any{"state": "pending", "instance": "gone", "stale_ns": time.Now().Add(300 * time.Millisecond).UnixNano()})
	start := time.Now()
	res, h := keyedRequest(t, nc, "crashed", encodeRequest(t, req), false)
	if res.Error != nil || res.Label != 2 || h.Get(wire.HeaderIdempotentReplayed) != "" {
		t.Fatalf("take-over: %+v %v", res, h)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Errorf("taken over after %v, before the record was stale", waited)
	}
	if len(small.seen()) != 1 {
		t.Fatalf("first stage saw %d items, want 1", len(small.seen()))
	}
	// Its result is kept for the next repeat.
	if res2, h := keyedRequest(t, nc, "crashed", encodeRequest(t, req), false); h.Get(wire.HeaderIdempotentReplayed) != "true" || res2.Label != 2 {
		t.Fatalf("repeat after the take-over: %+v %v", res2, h)
	}

	put("unkept", map[string]any{"state": "failed", "instance": "x", "message": "too large"})
	res, h = keyedRequest(t, nc, "unkept", []byte(oipBody("lost", "FP32", "[2,2]", "[0.5,0.5,0.5,0.5]", "")), true)
	if res.Error == nil || res.Error.Code != wire.CodeDuplicate || h.Get(wire.HeaderError) != string(wire.CodeDuplicate) {
		t.Fatalf("failed record: %+v %v", res, h)
	}
	if len(small.seen()) != 1 {
		t.Fatalf("first stage saw %d items, want 1", len(small.seen()))
	}
}
