package client_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/client"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// The tests here run the client against nats-server started from the
// shipped deploy/nats/single.conf (and so accounts.conf), as the client user
// billing, with a stand-in for the ingress and the workers: what the client
// sends, and that every operation it makes is one a client user may make.

// deployment is a server from the shipped config with pipeline "tiny"'s jobs
// stream and the results stream.
type deployment struct {
	url string
	js  jetstream.JetStream // the controller's
}

func startDeployment(t *testing.T) *deployment {
	t.Helper()
	natstest.SetDeployPasswords(t)
	srv := natstest.StartConfigFile(t, "../../deploy/nats/single.conf")
	d := &deployment{url: srv.ClientURL()}
	var err error
	if d.js, err = jetstream.New(d.connect(t, "controller", "", nil)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tc := natsbus.TopologyConfig{Storage: jetstream.MemoryStorage, MaxJobsBytes: 1 << 20, ResultsMaxBytes: 1 << 20}
	for _, cfg := range []jetstream.StreamConfig{natsbus.JobsStreamConfig("tiny", tc), natsbus.ResultsStreamConfig(tc)} {
		if _, err := d.js.CreateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// connect connects as user; errs, if set, receives the asynchronous errors
// the server sends (permission violations).
func (d *deployment) connect(t *testing.T, user, inboxPrefix string, errs chan<- error) *nats.Conn {
	t.Helper()
	return natstest.ConnectAs(t, d.url, user, inboxPrefix, errs)
}

// billing connects as the client user billing, with its own inboxes
// (errs, if not nil, receives the server's asynchronous errors), and
// returns its client of the tiny pipeline.
func (d *deployment) billing(t *testing.T, errs chan<- error) *client.Client {
	t.Helper()
	c, err := client.New(d.connect(t, "billing", "_INBOX.billing", errs), "tiny", client.WithClient("billing"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// received is a request the stand-in ingress got.
type received struct {
	req            wire.Request
	contentType    string
	idempotencyKey string
}

// fakeIngress answers requests on cascade.tiny.infer as the ingress user:
// label 7 for an FP32 item, one row per item for a batch ([N, 2] with
// N > 1), invalid_input for anything else.
func fakeIngress(t *testing.T, d *deployment) <-chan received {
	t.Helper()
	nc := d.connect(t, "ingress", "", nil)
	codec := wire.NewCodec()
	got := make(chan received, 16)
	_, err := nc.QueueSubscribe(wire.InferSubject("tiny"), wire.IngressQueue, func(m *nats.Msg) {
		var rec received
		rec.contentType = m.Header.Get(wire.HeaderContentType)
		rec.idempotencyKey = m.Header.Get(wire.HeaderIdempotencyKey)
		err := wire.DecodeRequestBody(rec.contentType, m.Data, &rec.req)
		got <- rec
		res := &wire.Result{ID: rec.req.ID, Pipeline: "tiny", Client: rec.req.Client}
		in := rec.req.Input
		switch {
		case err != nil:
			res.Error = wire.Errorf(wire.CodeInvalidInput, "%v", err)
		case in.Datatype != wire.FP32:
			res.Error = wire.Errorf(wire.CodeInvalidInput, "datatype %q, want FP32", in.Datatype)
		case len(in.Shape) == 2 && in.Shape[0] > 1:
			for i := range in.Shape[0] {
				res.Items = append(res.Items, wire.Result{ID: res.ID, Label: int(i), Confidence: 0.9, AnsweredBy: "small", Index: int(i)})
			}
		default:
			res.Label, res.Confidence, res.AnsweredBy = 7, 0.99, "small"
		}
		out := nats.NewMsg(m.Reply)
		out.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
		if res.Error != nil {
			out.Header.Set(wire.HeaderError, string(res.Error.Code))
		}
		if out.Data, err = codec.EncodeResult(res); err != nil {
			t.Error(err)
			return
		}
		_ = m.RespondMsg(out)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return got
}

func noErrors(t *testing.T, errs <-chan error) {
	t.Helper()
	for {
		select {
		case err := <-errs:
			t.Errorf("the server refused the client: %v", err)
		default:
			return
		}
	}
}

// TestInferAsAClientUser: Infer sends a msgpack request with the client's
// token, the timeout and the Idempotency-Key, through the client account's
// import, and turns error results into *wire.Error.
func TestInferAsAClientUser(t *testing.T) {
	d := startDeployment(t)
	got := fakeIngress(t, d)
	errs := make(chan error, 16)
	c := d.billing(t, errs)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	res, err := c.InferFloat32(ctx, []int64{2}, []float32{0.5, 1}, client.WithID("req-1"),
		client.WithTimeout(750*time.Millisecond), client.WithIdempotencyKey("order-42"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Label != 7 || res.ID != "req-1" || res.AnsweredBy != "small" {
		t.Fatalf("result %+v", res)
	}
	rec := <-got
	if rec.contentType != wire.ContentTypeMsgpack || rec.idempotencyKey != "order-42" || rec.req.Client != "billing" ||
		rec.req.TimeoutMs != 750 || rec.req.ID != "req-1" || !slices.Equal(rec.req.Input.Shape, []int64{2}) {
		t.Fatalf("the ingress got %+v", rec)
	}

	// Without a timeout: the context's deadline (under 20 s) is the
	// request's.
	if _, err := c.Infer(ctx, wire.FP32Tensor([]int64{2}, []float32{0, 0})); err != nil {
		t.Fatal(err)
	}
	if rec = <-got; rec.req.TimeoutMs <= 0 || rec.req.TimeoutMs > 20000 || rec.idempotencyKey != "" {
		t.Fatalf("the ingress got %+v", rec)
	}

	// A batch: one result per item, in order.
	res, err = c.InferFloat32(ctx, []int64{3, 2}, make([]float32, 6))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != 3 || res.Items[2].Label != 2 || res.Items[2].Index != 2 {
		t.Fatalf("batch result %+v", res)
	}
	<-got

	// An error result is a *wire.Error, and the result is returned too.
	res, err = c.Infer(ctx, wire.Tensor{Datatype: "INT8", Shape: []int64{2}, Data: []byte{1, 2}}, client.WithID("bad-1"))
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeInvalidInput || res == nil || res.ID != "bad-1" {
		t.Fatalf("error result: %v, %+v", err, res)
	}
	<-got

	// Options checked before anything is sent.
	if _, err := c.Infer(ctx, wire.Tensor{}, client.WithIdempotencyKey("white space")); wire.CodeOf(err) != wire.CodeInvalidInput {
		t.Fatalf("bad Idempotency-Key: %v", err)
	}
	if _, err := c.Infer(ctx, wire.Tensor{}, client.WithMsgID("x")); err == nil {
		t.Fatal("Infer took WithMsgID")
	}
	noErrors(t, errs)
}

// TestInferWithoutIngress: nobody listening is unavailable, at once; no
// answer in time is the context's deadline.
func TestInferWithoutIngress(t *testing.T) {
	d := startDeployment(t)
	c := d.billing(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.InferFloat32(ctx, []int64{2}, []float32{0, 0})
	if wire.CodeOf(err) != wire.CodeUnavailable || time.Since(start) > 5*time.Second {
		t.Fatalf("no ingress: %v after %v", err, time.Since(start))
	}

	// An ingress that never answers.
	silent := d.connect(t, "ingress", "", nil)
	if _, err := silent.QueueSubscribe(wire.InferSubject("tiny"), wire.IngressQueue, func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := silent.Flush(); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := c.InferFloat32(short, []int64{2}, []float32{0, 0}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no answer: %v", err)
	}
}

// TestSubmitAndResultsAsAClientUser: jobs land on the client's jobs
// subject (once per WithMsgID), and Results reads the client's results
// through its own durable consumer, msgpack and JSON alike, acknowledging
// each after the handler and handing a refused one over again.
func TestSubmitAndResultsAsAClientUser(t *testing.T) {
	d := startDeployment(t)
	errs := make(chan error, 16)
	c := d.billing(t, errs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	input := wire.FP32Tensor([]int64{2}, []float32{0.25, 0.75})
	job, err := c.Submit(ctx, &wire.Request{Input: input}, client.WithMsgID("job-1"), client.WithTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if job.ID == "" || job.Stream != wire.JobsStream("tiny") || job.Sequence != 1 || job.Duplicate {
		t.Fatalf("job %+v", job)
	}
	again, err := c.Submit(ctx, &wire.Request{ID: "mine", Input: input}, client.WithMsgID("job-1"))
	if err != nil || !again.Duplicate || again.ID != "mine" {
		t.Fatalf("the same Nats-Msg-Id again: %+v, %v", again, err)
	}
	if _, err := c.Submit(ctx, &wire.Request{Input: input}, client.WithIdempotencyKey("k")); err == nil {
		t.Fatal("Submit took WithIdempotencyKey")
	}
	jobs, err := d.js.Stream(ctx, wire.JobsStream("tiny"))
	if err != nil {
		t.Fatal(err)
	}
	stored, err := jobs.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var req wire.Request
	if err := wire.DecodeRequestBody(stored.Header.Get(wire.HeaderContentType), stored.Data, &req); err != nil {
		t.Fatal(err)
	}
	if stored.Subject != wire.JobsSubject("tiny", "billing") || req.ID != job.ID || req.Client != "billing" || req.TimeoutMs != 60000 {
		t.Fatalf("stored job on %s: %+v", stored.Subject, req)
	}

	// Results of three jobs, as the workers publish them: msgpack,
	// JSON (a job sent as JSON), and an error.
	wjs, err := jetstream.New(d.connect(t, "worker", "", nil))
	if err != nil {
		t.Fatal(err)
	}
	codec := wire.NewCodec()
	publish := func(r *wire.Result, format string) {
		t.Helper()
		body, ct, err := codec.EncodeResultAs(r, format)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(wire.ResultSubject("tiny", "billing"))
		m.Header.Set(wire.HeaderContentType, ct)
		m.Data = body
		if _, err := wjs.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	publish(&wire.Result{ID: job.ID, Pipeline: "tiny", Client: "billing", Label: 3, Confidence: 0.8, AnsweredBy: "small"}, wire.ResultFormatMsgpack)
	publish(&wire.Result{ID: "json-job", Pipeline: "tiny", Client: "billing", Label: 4, Confidence: 0.7, AnsweredBy: "big"}, wire.ResultFormatJSON)
	publish(&wire.Result{ID: "bad-job", Pipeline: "tiny", Client: "billing", Error: wire.Errorf(wire.CodeInvalidInput, "shape")}, wire.ResultFormatMsgpack)

	// A handler that refuses the second result stops Results with its
	// error; the result is not acknowledged.
	refuse := errors.New("not now")
	var seen []string
	err = c.Results(ctx, func(r *wire.Result) error {
		seen = append(seen, r.ID)
		if r.ID == "json-job" {
			return refuse
		}
		return nil
	}, client.WithAckWait(time.Minute))
	if !errors.Is(err, refuse) || !slices.Equal(seen, []string{job.ID, "json-job"}) {
		t.Fatalf("Results: %v after %q", err, seen)
	}

	// The next Results gets the refused result and the one pulled ahead
	// within seconds (handed back, not left to the ack wait of a minute),
	// in either order.
	rctx, stop := context.WithCancel(ctx)
	results := map[string]wire.Result{}
	start := time.Now()
	err = c.Results(rctx, func(r *wire.Result) error {
		results[r.ID] = *r
		if len(results) == 2 {
			stop()
		}
		return nil
	}, client.WithPrefetch(1), client.WithAckWait(time.Minute))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Results after cancel: %v", err)
	}
	if elapsed := time.Since(start); elapsed > 20*time.Second {
		t.Errorf("the results came again after %v", elapsed)
	}
	if r := results["json-job"]; r.Label != 4 || r.AnsweredBy != "big" || r.Error != nil {
		t.Fatalf("JSON result %+v", r)
	}
	if r := results["bad-job"]; r.Error == nil || r.Error.Code != wire.CodeInvalidInput {
		t.Fatalf("error result %+v", r)
	}

	// Every result was acknowledged, by the consumer the client may own.
	cons, err := d.js.Consumer(ctx, wire.ResultsStream, "billing")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream != 3 || info.NumAckPending != 0 || info.Config.FilterSubject != wire.ResultSubject("tiny", "billing") {
		t.Fatalf("consumer: ack floor %d, pending %d, filter %q", info.AckFloor.Stream, info.NumAckPending, info.Config.FilterSubject)
	}
	noErrors(t, errs)
}

// TestNewValidates: New refuses names that cannot be subject tokens.
func TestNewValidates(t *testing.T) {
	nc := new(nats.Conn) // never used: New checks the names first
	for _, tc := range []struct {
		pipeline string
		opts     []client.Option
	}{
		{"", nil}, {"a.b", nil}, {"tiny", []client.Option{client.WithClient("x.>")}},
		{"tiny", []client.Option{client.WithDefaultTimeout(0)}},
	} {
		if _, err := client.New(nc, tc.pipeline, tc.opts...); err == nil {
			t.Errorf("New(%q, %d options) accepted", tc.pipeline, len(tc.opts))
		}
	}
	if _, err := client.New(nil, "tiny"); err == nil {
		t.Error("New accepted a nil connection")
	}
}
