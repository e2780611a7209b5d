package stageworker

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

const replySubject = "_INBOX.test.replies"

// checkExactlyOnce fails unless every id has exactly one reply and one
// durable result, and nothing else arrived.
func checkExactlyOnce(t *testing.T, ids []string, got map[string][]*wire.Result, n int, what string) {
	t.Helper()
	if n != len(ids) || len(got) != len(ids) {
		t.Errorf("%s: %d results for %d distinct ids, want %d", what, n, len(got), len(ids))
	}
	for _, id := range ids {
		if k := len(got[id]); k != 1 {
			t.Errorf("%s: %d results for %s, want 1", what, k, id)
		}
	}
}

// TestCascadeMatchesReplay serves a few hundred MNIST test images through a
// three-stage cascade and checks every decision against an in-process
// replay with the same thresholds, and that every request gets exactly
// one result on each of its channels.
func TestCascadeMatchesReplay(t *testing.T) {
	g := gear("g3", 100, 32, 2, "linear", 0.9, "mlp_small", 0.8, "mlp")
	p := testPlan(t, []plan.Gear{g})
	e := startEnv(t, p)
	const n = 300
	set := images(t, n)
	o := newOracle(t, e, set)
	rep := e.listen(t, replySubject)
	w := e.startWorker(t, nil, hooks{})

	var ids []string
	for i := range n {
		it := newItem(p, fmt.Sprintf("img-%d", i), g.ID, set.Item(i), time.Now().Add(time.Minute))
		it.ReplyTo, it.Durable = replySubject, true
		it.ReturnProbabilities = i%2 == 0
		ids = append(ids, it.ID)
		e.admit(t, "linear", it)
	}
	natstest.WaitFor(t, "all replies", 60*time.Second, func() bool { _, k := rep.snapshot(); return k >= n })
	natstest.WaitFor(t, "empty queues", 30*time.Second, func() bool { return e.queuesEmpty(t) })
	got, k := rep.snapshot()
	checkExactlyOnce(t, ids, got, k, "replies")
	durable, k := e.durableResults(t, "test")
	checkExactlyOnce(t, ids, durable, k, "durable results")

	answeredAt := map[string]int{}
	ambiguous := 0
	for i, id := range ids {
		if len(got[id]) == 0 {
			continue
		}
		res := got[id][0]
		want, amb := o.cascade(g, i)
		answeredAt[want]++
		if res.Error != nil {
			t.Errorf("%s: error %v", id, res.Error)
			continue
		}
		if amb {
			ambiguous++
			continue
		}
		if res.AnsweredBy != want || res.Label != o.label[want][i] || res.Degraded {
			t.Errorf("%s: answered by %s label %d degraded %v; replay: %s label %d", id, res.AnsweredBy, res.Label, res.Degraded, want, o.label[want][i])
		}
		stage, _ := g.StageOf(want)
		if len(res.Visits) != stage+1 || res.Visits[len(res.Visits)-1].Model != want {
			t.Errorf("%s: visits %+v, want %d ending at %s", id, res.Visits, stage+1, want)
		}
		for j, v := range res.Visits {
			if v.Model != g.Cascade[j].Model || v.Gear != g.ID || v.BatchSize < 1 || v.ComputeNs <= 0 {
				t.Errorf("%s: visit %d = %+v", id, j, v)
			}
		}
		if (len(res.Probabilities) == 10) != (i%2 == 0) {
			t.Errorf("%s: %d probabilities, return_probabilities %v", id, len(res.Probabilities), i%2 == 0)
		}
		if res.Gear != g.ID || res.AdmittedGear != g.ID || res.TotalNs <= 0 {
			t.Errorf("%s: gear %q admitted %q total %d", id, res.Gear, res.AdmittedGear, res.TotalNs)
		}
		if d := durable[id]; len(d) == 1 && (d[0].AnsweredBy != res.AnsweredBy || d[0].Label != res.Label) {
			t.Errorf("%s: durable result %s/%d differs from reply %s/%d", id, d[0].AnsweredBy, d[0].Label, res.AnsweredBy, res.Label)
		}
	}
	t.Logf("answered per model (replay): %v; %d of %d within float noise of a threshold (not checked)", answeredAt, ambiguous, n)
	if ambiguous > n/50 {
		t.Errorf("%d items within 1e-4 of a threshold: the check is too weak", ambiguous)
	}
	if len(answeredAt) < len(g.Cascade) {
		t.Errorf("the replay answers only at %v: pick thresholds that exercise every stage", answeredAt)
	}
	escalated := float64(answeredAt["mlp_small"] + answeredAt["mlp"])
	if got := w.counter("cascade_worker_items_total", "model", "linear", "outcome", "escalated"); got != escalated {
		t.Errorf("linear escalated %v items, replay says %v", got, escalated)
	}
	if got := w.counter("cascade_worker_batch_size_items", "model", "linear"); got < 1 {
		t.Errorf("no linear batches recorded")
	}
}

// TestResultFormats: durable results, error results included, are written
// in the item's ResultFormat with the matching Content-Type header: the OIP
// JSON response body for items of JSON jobs, msgpack for the others.
func TestResultFormats(t *testing.T) {
	g := gear("solo", 100, 16, 1, "linear")
	p := testPlan(t, []plan.Gear{g})
	e := startEnv(t, p)
	set := images(t, 1)
	live, past := time.Now().Add(time.Minute), time.Now().Add(-time.Second)
	type want struct {
		format string
		code   wire.Code
	}
	cases := map[string]want{
		"msgpack":      {wire.ResultFormatMsgpack, ""},
		"json":         {wire.ResultFormatJSON, ""},
		"json-late":    {wire.ResultFormatJSON, wire.CodeDeadlineExceeded},
		"json-invalid": {wire.ResultFormatJSON, wire.CodeInvalidInput},
		"msgpack-late": {wire.ResultFormatMsgpack, wire.CodeDeadlineExceeded},
	}
	for id, c := range cases {
		deadline := live
		if c.code == wire.CodeDeadlineExceeded {
			deadline = past
		}
		it := newItem(p, id, g.ID, set.Item(0), deadline)
		it.Durable, it.ResultFormat, it.ReturnProbabilities = true, c.format, true
		if c.code == wire.CodeInvalidInput {
			it.Input = wire.FP32Tensor([]int64{3}, []float32{1, 2, 3})
		}
		e.admit(t, "linear", it)
	}
	e.startWorker(t, nil, hooks{})
	natstest.WaitFor(t, "durable results", 30*time.Second, func() bool { return len(e.durableMsgs(t, "test")) >= len(cases) })
	natstest.WaitFor(t, "empty queues", 30*time.Second, func() bool { return e.queuesEmpty(t) })

	msgs := e.durableMsgs(t, "test")
	if len(msgs) != len(cases) {
		t.Fatalf("%d durable results, want %d", len(msgs), len(cases))
	}
	got := map[string]*wire.Result{}
	for _, m := range msgs {
		id, ok := strings.CutSuffix(strings.TrimPrefix(m.Header.Get(wire.HeaderMsgID), "mnist."), ".result")
		c, known := cases[id]
		if !ok || !known {
			t.Errorf("result with %s %q", wire.HeaderMsgID, m.Header.Get(wire.HeaderMsgID))
			continue
		}
		var res wire.Result
		ct := m.Header.Get(wire.HeaderContentType)
		switch c.format {
		case wire.ResultFormatJSON:
			if ct != wire.ContentTypeJSON {
				t.Errorf("%s: Content-Type %q, want %q", id, ct, wire.ContentTypeJSON)
			}
			if err := wire.DecodeOIPResponse(m.Data, &res); err != nil {
				t.Errorf("%s: not an OIP JSON body: %v: %q", id, err, m.Data)
				continue
			}
		default:
			if ct != wire.ContentTypeMsgpack {
				t.Errorf("%s: Content-Type %q, want %q", id, ct, wire.ContentTypeMsgpack)
			}
			if err := wire.DecodeResult(m.Data, &res); err != nil {
				t.Errorf("%s: not a msgpack result: %v", id, err)
				continue
			}
		}
		if res.ID != id {
			t.Errorf("%s: result id %q", id, res.ID)
		}
		switch {
		case c.code != "" && (res.Error == nil || res.Error.Code != c.code):
			t.Errorf("%s: error %v, want %s", id, res.Error, c.code)
		case c.code != "" && m.Header.Get(wire.HeaderError) != string(c.code):
			t.Errorf("%s: %s %q, want %q", id, wire.HeaderError, m.Header.Get(wire.HeaderError), c.code)
		case c.code == "" && (res.Error != nil || res.AnsweredBy != "linear" || len(res.Probabilities) != 10):
			t.Errorf("%s: result %+v, want an answer by linear with probabilities", id, res)
		}
		got[id] = &res
	}
	// The same image gets the same answer in either encoding.
	if a, b := got["msgpack"], got["json"]; a != nil && b != nil && (a.Label != b.Label || math.Abs(a.Confidence-b.Confidence) > 1e-6) {
		t.Errorf("msgpack answer %d (%v), JSON answer %d (%v)", a.Label, a.Confidence, b.Label, b.Confidence)
	}
}
