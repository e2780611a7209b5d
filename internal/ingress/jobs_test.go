package ingress_test

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// publishJob publishes a job and checks its PubAck (the producer's
// "accepted").
func (e *testEnv) publishJob(t *testing.T, client string, body []byte, asJSON bool, msgID string) {
	t.Helper()
	msg := nats.NewMsg(wire.JobsSubject(e.plan.Pipeline, client))
	msg.Data = body
	if asJSON {
		msg.Header.Set(wire.HeaderContentType, wire.ContentTypeJSON)
	}
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := e.srv.JS.PublishMsg(context.Background(), msg, opts...)
	if err != nil {
		t.Fatalf("publish job: %v", err)
	}
	if ack.Stream != wire.JobsStream(e.plan.Pipeline) {
		t.Fatalf("job stored in %q", ack.Stream)
	}
}

// TestJobs: jobs published before any ingress runs are accepted (PubAck)
// and, once an ingress starts, each gets exactly one result on the results
// stream: answers for valid jobs, typed errors for invalid ones.
func TestJobs(t *testing.T) {
	e := startEnv(t)
	nan := validRequest("job-nan")
	nan.Input = wire.FP32Tensor([]int64{2, 2}, []float32{1, float32(nanValue()), 1, 1})
	badShape := validRequest("job-shape")
	badShape.Input.Shape = []int64{1, 4}
	withClient := validRequest("job-client")
	withClient.Client = "ignored" // the subject names the client

	type want struct {
		code  wire.Code
		label int
	}
	wants := map[string]want{}
	e.publishJob(t, "batch", encodeRequest(t, validRequest("job-1")), false, "")
	wants["job-1"] = want{label: 2}
	e.publishJob(t, "batch", encodeRequest(t, withClient), false, "")
	wants["job-client"] = want{label: 2}
	e.publishJob(t, "batch", []byte(oipBody("job-json", "UINT8", "[2,2]", "[2,2,2,0]", `{"return_probabilities":true}`)), true, "")
	wants["job-json"] = want{label: 3}
	e.publishJob(t, "batch", encodeRequest(t, nan), false, "")
	wants["job-nan"] = want{code: wire.CodeInvalidInput}
	e.publishJob(t, "batch", encodeRequest(t, badShape), false, "")
	wants["job-shape"] = want{code: wire.CodeInvalidInput}
	past := validRequest("job-late")
	past.DeadlineUnixMs = 1000
	e.publishJob(t, "batch", encodeRequest(t, past), false, "")
	wants["job-late"] = want{code: wire.CodeDeadlineExceeded}
	// Without an id, and undecodable: ids are derived from the stream.
	e.publishJob(t, "batch", encodeRequest(t, validRequest("")), false, "")
	e.publishJob(t, "batch", []byte("garbage"), false, "")
	// The producer deduplicates its own retries with Nats-Msg-Id.
	e.publishJob(t, "batch", encodeRequest(t, validRequest("job-retried")), false, "p-1")
	e.publishJob(t, "batch", encodeRequest(t, validRequest("job-retried")), false, "p-1")
	wants["job-retried"] = want{label: 2}
	// Another client's results go to its own subject.
	e.publishJob(t, "other", encodeRequest(t, validRequest("job-other")), false, "")
	if got := e.srv.StreamMsgs(t, wire.JobsStream(pipeline)); got != 10 {
		t.Fatalf("jobs stream holds %d jobs, want 10", got)
	}

	ti := e.ready(t, nil)
	small := e.respond(t, "small")
	natstest.WaitFor(t, "jobs routed", 20*time.Second, func() bool { return e.srv.StreamMsgs(t, wire.JobsStream(pipeline)) == 0 })
	natstest.WaitFor(t, "queue drained", 20*time.Second, func() bool { return e.srv.StreamMsgs(t, wire.ModelStream(pipeline, "small")) == 0 })
	natstest.WaitFor(t, "10 results", 20*time.Second, func() bool {
		return len(e.results(t, "batch"))+len(e.results(t, "other")) >= 10
	})

	results := e.results(t, "batch")
	byID := map[string][]*wire.Result{}
	var derived []string
	for _, r := range results {
		byID[r.ID] = append(byID[r.ID], r)
		if _, ok := wants[r.ID]; !ok {
			derived = append(derived, r.ID)
		}
		if r.Client != "batch" {
			t.Errorf("result %s for client %q", r.ID, r.Client)
		}
	}
	for id, w := range wants {
		rs := byID[id]
		if len(rs) != 1 {
			t.Errorf("%s: %d results, want exactly 1", id, len(rs))
			continue
		}
		r := rs[0]
		switch {
		case w.code != "" && (r.Error == nil || r.Error.Code != w.code):
			t.Errorf("%s: error %+v, want %s", id, r.Error, w.code)
		case w.code == "" && (r.Error != nil || r.Label != w.label || r.AnsweredBy != "small"):
			t.Errorf("%s: result %+v, want label %d", id, r, w.label)
		}
	}
	if byID["job-json"][0].Probabilities == nil {
		t.Error("job-json: no probabilities")
	}
	sort.Strings(derived)
	if len(derived) != 2 {
		t.Fatalf("results with derived ids: %v, want 2 (the id-less job and the garbage)", derived)
	}
	var garbage int
	for _, id := range derived {
		r := byID[id]
		if len(r) != 1 {
			t.Errorf("%s: %d results", id, len(r))
		}
		if r[0].Error != nil && r[0].Error.Code == wire.CodeInvalidInput {
			garbage++
		}
	}
	if garbage != 1 {
		t.Errorf("%d invalid_input results among the id-less jobs, want 1", garbage)
	}
	other := e.results(t, "other")
	if len(other) != 1 || other[0].ID != "job-other" || other[0].Error != nil {
		t.Errorf("results of client other: %+v", other)
	}
	if len(results) != 9 {
		t.Errorf("%d results for client batch, want 9", len(results))
	}
	for _, it := range small.seen() {
		if !it.Durable || it.ReplyTo != "" {
			t.Errorf("item %s durable %v reply %q", it.ID, it.Durable, it.ReplyTo)
		}
	}
	if got := ti.counter(t, "cascade_ingress_requests_total", "door", "jobs", "outcome", "admitted"); got != 6 {
		t.Errorf("jobs admitted = %v, want 6", got)
	}
	// An id is the caller's, not a key: the same id again, from the same
	// client or another, is a new job with its own result on its own
	// client's subject (the publish itself is deduplicated only by
	// Nats-Msg-Id, as job-retried above).
	e.publishJob(t, "batch", encodeRequest(t, validRequest("job-1")), false, "")
	e.publishJob(t, "other", encodeRequest(t, validRequest("job-1")), false, "")
	natstest.WaitFor(t, "repeated ids answered", 20*time.Second, func() bool {
		return len(e.results(t, "batch")) == 10 && len(e.results(t, "other")) == 2
	})
	var again int
	for _, r := range e.results(t, "batch") {
		if r.ID == "job-1" {
			again++
			if r.Error != nil || r.Label != 2 {
				t.Errorf("repeated job-1: %+v", r)
			}
		}
	}
	if again != 2 {
		t.Errorf("client batch has %d results for job-1, want 2 (one per job)", again)
	}
	if got := ti.counter(t, "cascade_ingress_requests_total", "door", "jobs", "outcome", "duplicate"); got != 0 {
		t.Errorf("jobs answered duplicate = %v, want 0", got)
	}
}

// isJobResultMsgID reports whether id is the Nats-Msg-Id of a job's result:
// derived from the job's key (its stream sequence), not from its id.
func isJobResultMsgID(pipeline, id string) bool {
	return strings.HasPrefix(id, pipeline+".j") && strings.HasSuffix(id, ".result")
}

// TestJobsOverloaded: a job that meets a full first queue stays durable
// (NakWithDelay) and is routed once the queue drains; one that meets it on
// every allowed delivery gets `overloaded` as its one result.
func TestJobsOverloaded(t *testing.T) {
	t.Run("retried until the queue drains", func(t *testing.T) {
		e := startEnvWith(t, natsbus.TopologyConfig{MaxQueue: 1, MaxDeliver: 1000})
		fill(t, e, 1)
		ti := e.ready(t, nil)
		e.publishJob(t, "c", encodeRequest(t, validRequest("job-wait")), false, "")
		natstest.WaitFor(t, "job deferred twice", 20*time.Second, func() bool {
			return ti.counter(t, "cascade_ingress_requests_total", "door", "jobs", "outcome", "deferred") >= 2
		})
		if got := e.srv.StreamMsgs(t, wire.JobsStream(pipeline)); got != 1 {
			t.Fatalf("jobs stream holds %d, want the deferred job", got)
		}
		if got := len(e.results(t, "c")); got != 0 {
			t.Fatalf("%d results while deferred", got)
		}
		purge(t, e, "small")
		e.respond(t, "small")
		natstest.WaitFor(t, "one result", 20*time.Second, func() bool { return len(e.results(t, "c")) == 1 })
		if r := e.results(t, "c")[0]; r.ID != "job-wait" || r.Error != nil || r.Label != 2 {
			t.Fatalf("result %+v", r)
		}
		natstest.WaitFor(t, "job acked", 10*time.Second, func() bool { return e.srv.StreamMsgs(t, wire.JobsStream(pipeline)) == 0 })
	})
	t.Run("last delivery answers overloaded", func(t *testing.T) {
		e := startEnvWith(t, natsbus.TopologyConfig{MaxQueue: 1, MaxDeliver: 3})
		fill(t, e, 1)
		e.ready(t, nil)
		e.publishJob(t, "c", encodeRequest(t, validRequest("job-full")), false, "")
		natstest.WaitFor(t, "one result", 20*time.Second, func() bool { return len(e.results(t, "c")) == 1 })
		if r := e.results(t, "c")[0]; r.ID != "job-full" || r.Error == nil || r.Error.Code != wire.CodeOverloaded {
			t.Fatalf("result %+v", r)
		}
		natstest.WaitFor(t, "job acked", 10*time.Second, func() bool { return e.srv.StreamMsgs(t, wire.JobsStream(pipeline)) == 0 })
		if got := e.srv.StreamMsgs(t, wire.ModelStream(pipeline, "small")); got != 1 {
			t.Fatalf("queue holds %d, want only the filler", got)
		}
	})
}

func fill(t *testing.T, e *testEnv, n int) {
	t.Helper()
	for i := range n {
		if _, err := e.srv.JS.Publish(context.Background(), wire.ModelSubject(pipeline, "small"), []byte(fmt.Sprint("filler", i))); err != nil {
			t.Fatal(err)
		}
	}
}

func purge(t *testing.T, e *testEnv, model string) {
	t.Helper()
	s, err := e.srv.JS.Stream(context.Background(), wire.ModelStream(pipeline, model))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestJobsResultFormat: a job gets its result in the encoding it was sent
// in, with the header Content-Type saying which: a JSON job's item asks
// the workers for a JSON result (the responder writes it as the stage
// worker does), and the ingress's own error results for invalid jobs are
// JSON for JSON jobs (the OIP error body with the job's id) and msgpack
// for the others, with the header Cascade-Error.
func TestJobsResultFormat(t *testing.T) {
	e := startEnv(t)
	e.ready(t, nil)
	small := e.respond(t, "small")

	type job struct {
		client string
		body   []byte
		asJSON bool
		id     string    // "" when the body has no readable id
		code   wire.Code // "" for an answer
	}
	jobs := []job{
		{"fmt-mp", encodeRequest(t, validRequest("fmt-mp")), false, "fmt-mp", ""},
		{"fmt-json", []byte(oipBody("fmt-json", "FP32", "[2,2]", "[0.5,0.5,0.5,0.5]", `{"return_probabilities":true}`)), true, "fmt-json", ""},
		{"fmt-json-shape", []byte(oipBody("fmt-json-shape", "FP32", "[4]", "[0.5,0.5,0.5,0.5]", "")), true, "fmt-json-shape", wire.CodeInvalidInput},
		{"fmt-json-garbage", []byte(`{"inputs": [oops`), true, "", wire.CodeInvalidInput},
		{"fmt-mp-garbage", []byte("garbage"), false, "", wire.CodeInvalidInput},
	}
	for _, j := range jobs {
		e.publishJob(t, j.client, j.body, j.asJSON, "")
	}
	natstest.WaitFor(t, "jobs settled", 20*time.Second, func() bool { return e.srv.StreamMsgs(t, wire.JobsStream(pipeline)) == 0 })
	for _, j := range jobs {
		t.Run(j.client, func(t *testing.T) {
			var msgs []*nats.Msg
			natstest.WaitFor(t, "result", 20*time.Second, func() bool { msgs = e.resultMsgs(t, j.client); return len(msgs) > 0 })
			if len(msgs) != 1 {
				t.Fatalf("%d results, want 1", len(msgs))
			}
			m := msgs[0]
			var res wire.Result
			ct := m.Header.Get(wire.HeaderContentType)
			if j.asJSON {
				if ct != wire.ContentTypeJSON {
					t.Fatalf("Content-Type %q, want %q", ct, wire.ContentTypeJSON)
				}
				if err := wire.DecodeOIPResponse(m.Data, &res); err != nil {
					t.Fatalf("not an OIP JSON body: %v: %s", err, m.Data)
				}
			} else {
				if ct != wire.ContentTypeMsgpack {
					t.Fatalf("Content-Type %q, want %q", ct, wire.ContentTypeMsgpack)
				}
				if err := wire.DecodeResult(m.Data, &res); err != nil {
					t.Fatalf("not a msgpack result: %v", err)
				}
			}
			if res.ID == "" || (j.id != "" && res.ID != j.id) || !isJobResultMsgID(pipeline, m.Header.Get(wire.HeaderMsgID)) {
				t.Errorf("result id %q, %s %q; want %q", res.ID, wire.HeaderMsgID, m.Header.Get(wire.HeaderMsgID), j.id)
			}
			switch {
			case j.code != "" && (res.Error == nil || res.Error.Code != j.code || m.Header.Get(wire.HeaderError) != string(j.code)):
				t.Errorf("error %+v, %s %q; want %s", res.Error, wire.HeaderError, m.Header.Get(wire.HeaderError), j.code)
			case j.code == "" && (res.Error != nil || res.Label != 2 || res.AnsweredBy != "small"):
				t.Errorf("result %+v, want label 2 by small", res)
			}
		})
	}
	if r := e.results(t, "fmt-json"); len(r) == 1 && len(r[0].Probabilities) != 3 {
		t.Errorf("JSON result probabilities %v, want 3", r[0].Probabilities)
	}
	// The items carry the format the workers must write.
	formats := map[string]string{}
	for _, it := range small.seen() {
		formats[it.ID] = it.ResultFormat
	}
	if want := map[string]string{"fmt-mp": wire.ResultFormatMsgpack, "fmt-json": wire.ResultFormatJSON}; !maps.Equal(formats, want) {
		t.Errorf("items' result formats %v, want %v", formats, want)
	}
}
