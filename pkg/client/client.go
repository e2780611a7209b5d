// Package client is a small Go client of a CascadeServe pipeline over NATS,
// for producers in their own modules. It speaks the message contract of
// package wire (msgpack bodies) through the pipeline's three NATS doors:
//
//   - Infer: request-reply on cascade.<pipeline>.infer. The answer is a
//     *wire.Result; an error result is returned as a *wire.Error (its Code
//     says what went wrong: wire.CodeInvalidInput, wire.CodeOverloaded, …).
//     An input of shape [N, item shape…] is a batch of N items, answered
//     in one Result whose Items hold the N results in input order.
//   - Submit: a durable job published to JetStream on
//     cascade.<pipeline>.jobs.<client>; its PubAck means the job will get
//     exactly one result on cascade.<pipeline>.result.<client>.
//   - Results: an asynchronous consumer of those results on the stream
//     CASCADE_RESULTS, through a durable pull consumer named after the
//     client and filtered to its results subject (what
//     deploy/nats/accounts.conf lets a client user create), acknowledging
//     each result after the handler has processed it.
//
// A Client is one client identity (WithClient, "default" unless set): the
// jobs it submits and the results it reads are that client's. With
// deploy/nats/accounts.conf, connect as the client's user with
// nats.CustomInboxPrefix("_INBOX.<client>"). A Client is safe for
// concurrent use; the connection stays the caller's (the Client neither
// closes it nor changes its options).
//
//	nc, _ := nats.Connect(url, nats.UserInfo("billing", pw), nats.CustomInboxPrefix("_INBOX.billing"))
//	c, _ := client.New(nc, "mnist", client.WithClient("billing"))
//	res, err := c.InferFloat32(ctx, []int64{1, 28, 28}, pixels, client.WithTimeout(500*time.Millisecond))
//	if wire.CodeOf(err) == wire.CodeOverloaded { /* back off and retry */ }
//	job, _ := c.Submit(ctx, &wire.Request{Input: input}, client.WithMsgID("order-42"))
//	_ = c.Results(ctx, func(r *wire.Result) error { fmt.Println(r.ID, r.Label, r.Error); return nil })
//
// See the examples for complete ones.
package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// DefaultTimeout is the deadline Infer gives a request when neither the
// call (WithTimeout, a deadline on its context, the request's own fields)
// nor the Client (WithDefaultTimeout) sets one: the ingress's default.
const DefaultTimeout = 5 * time.Second

// ReplyGrace is how long Infer waits for the answer past the request's
// deadline, so the pipeline's own deadline_exceeded answer can arrive.
const ReplyGrace = time.Second

// Client sends requests and jobs to one pipeline and reads its results.
type Client struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	pipeline string
	client   string
	timeout  time.Duration
	codec    *wire.Codec
}

// Option configures a Client (New).
type Option func(*Client)

// WithClient sets the client token (1-64 letters, digits, '-' or '_'):
// the last token of the jobs and results subjects, the name of the results
// consumer, and the owner of idempotency keys. Default wire.DefaultClient.
func WithClient(name string) Option { return func(c *Client) { c.client = name } }

// WithDefaultTimeout sets the deadline of Infer calls that set none
// (DefaultTimeout unless set).
func WithDefaultTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// New returns a client of pipeline over nc.
func New(nc *nats.Conn, pipeline string, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errors.New("client: nil NATS connection")
	}
	c := &Client{nc: nc, pipeline: pipeline, client: wire.DefaultClient, timeout: DefaultTimeout, codec: wire.NewCodec()}
	for _, o := range opts {
		o(c)
	}
	if !wire.ValidToken(pipeline) {
		return nil, fmt.Errorf("client: pipeline %q: want 1-64 letters, digits, '-' or '_'", pipeline)
	}
	if !wire.ValidToken(c.client) {
		return nil, fmt.Errorf("client: client %q: want 1-64 letters, digits, '-' or '_'", c.client)
	}
	if c.timeout <= 0 {
		return nil, fmt.Errorf("client: default timeout %v: want > 0", c.timeout)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c.js = js
	return c, nil
}

// Pipeline returns the pipeline the client sends to.
func (c *Client) Pipeline() string { return c.pipeline }

// Name returns the client token (WithClient).
func (c *Client) Name() string { return c.client }

// CallOption configures one Infer or Submit call.
type CallOption func(*callOptions)

type callOptions struct {
	id             string
	timeout        time.Duration
	idempotencyKey string
	msgID          string
}

// WithID sets the request's id, a correlation id echoed in its result
// (1-64 letters, digits, '-' or '_'). Without it Infer leaves the id to the
// ingress and Submit assigns one.
func WithID(id string) CallOption { return func(o *callOptions) { o.id = id } }

// WithTimeout bounds the time from admission to result (the request's
// timeout_ms). Infer waits for the answer up to it plus ReplyGrace (less if
// its context ends sooner). A job's timeout counts from its admission by an
// ingress, not from the PubAck.
func WithTimeout(d time.Duration) CallOption { return func(o *callOptions) { o.timeout = d } }

// WithIdempotencyKey (Infer only) sends the header Idempotency-Key: a repeat
// with the same key by the same client within the idempotency window is
// answered with the first request's result instead of being computed again.
// A key is 1-255 visible ASCII characters.
func WithIdempotencyKey(key string) CallOption {
	return func(o *callOptions) { o.idempotencyKey = key }
}

// WithMsgID (Submit only) sets the header Nats-Msg-Id: the jobs stream
// stores a job once per id within its deduplication window, and the PubAck
// of a repeat says Duplicate.
func WithMsgID(id string) CallOption { return func(o *callOptions) { o.msgID = id } }

func apply(opts []CallOption) callOptions {
	var o callOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// request returns a copy of req, which is never modified, with the id of
// WithID and the timeout of WithTimeout (replacing the request's own
// deadline), where given.
func (o callOptions) request(req *wire.Request) wire.Request {
	r := *req
	if o.id != "" {
		r.ID = o.id
	}
	if o.timeout > 0 {
		r.TimeoutMs, r.DeadlineUnixMs = durationMs(o.timeout), 0
	}
	return r
}

// Infer sends one input (one item of the pipeline's item shape, or a batch
// [N, item shape…]) and waits for its result. See InferRequest.
func (c *Client) Infer(ctx context.Context, input wire.Tensor, opts ...CallOption) (*wire.Result, error) {
	return c.InferRequest(ctx, &wire.Request{Input: input}, opts...)
}

// InferFloat32 is Infer with an FP32 input of the given shape.
func (c *Client) InferFloat32(ctx context.Context, shape []int64, values []float32, opts ...CallOption) (*wire.Result, error) {
	return c.Infer(ctx, wire.FP32Tensor(shape, values), opts...)
}

// InferRequest sends req (not modified) by request-reply and waits for its
// result.
//
// The request's deadline is, in order: WithTimeout, req's own TimeoutMs or
// DeadlineUnixMs, the time left on ctx, the client's default timeout. Infer
// waits for the answer until that deadline plus ReplyGrace, or until ctx
// ends.
//
// When the result is an error (the whole request refused or failed), Infer
// returns the result and its *wire.Error. For a batch, an item's own error
// is in its Items entry and the call's error is nil. No ingress listening
// is a *wire.Error with wire.CodeUnavailable; no answer in time is an error
// wrapping context.DeadlineExceeded (or ctx's error).
func (c *Client) InferRequest(ctx context.Context, req *wire.Request, opts ...CallOption) (*wire.Result, error) {
	o := apply(opts)
	if o.msgID != "" {
		return nil, errors.New("client: WithMsgID applies to Submit; Infer takes WithIdempotencyKey")
	}
	r := o.request(req)
	if r.Client == "" {
		r.Client = c.client
	}
	if r.TimeoutMs <= 0 && r.DeadlineUnixMs <= 0 {
		// Neither the call nor the request sets a deadline: ctx's, else
		// the client's default timeout.
		if dl, ok := ctx.Deadline(); ok {
			r.TimeoutMs = durationMs(time.Until(dl))
		} else {
			r.TimeoutMs = durationMs(c.timeout)
		}
	}
	wait := time.Duration(r.TimeoutMs) * time.Millisecond
	if r.DeadlineUnixMs > 0 {
		wait = time.Until(time.UnixMilli(r.DeadlineUnixMs))
	}
	wait = max(wait, 0) + ReplyGrace

	subject := wire.InferSubject(c.pipeline)
	msg := nats.NewMsg(subject)
	msg.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
	if o.idempotencyKey != "" {
		if !wire.ValidIdempotencyKey(o.idempotencyKey) {
			return nil, wire.Errorf(wire.CodeInvalidInput, "%s: want 1-%d visible ASCII characters", wire.HeaderIdempotencyKey, wire.MaxIdempotencyKey)
		}
		msg.Header.Set(wire.HeaderIdempotencyKey, o.idempotencyKey)
	}
	body, err := c.codec.EncodeRequest(&r)
	if err != nil {
		return nil, fmt.Errorf("client: encode request: %w", err)
	}
	msg.Data = body

	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	reply, err := c.nc.RequestMsgWithContext(ctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, wire.Errorf(wire.CodeUnavailable, "no ingress answers on %s", subject)
	case err != nil:
		return nil, fmt.Errorf("client: no answer on %s: %w", subject, err)
	}
	var res wire.Result
	if err := wire.DecodeResultBody(reply.Header.Get(wire.HeaderContentType), reply.Data, &res); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	if res.Error != nil {
		return &res, res.Error
	}
	return &res, nil
}

// durationMs is d in whole milliseconds, at least 1.
func durationMs(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// Job is an accepted durable job.
type Job struct {
	// ID is the job's request id, echoed in its result: the request's own,
	// WithID, or one Submit assigned.
	ID string
	// Stream and Sequence locate the job in the jobs stream.
	Stream   string
	Sequence uint64
	// Duplicate: the stream already held a job with this WithMsgID; this
	// publish stored nothing.
	Duplicate bool
}

// Submit publishes req (not modified) as a durable job of the client and
// returns once the jobs stream has stored it. The job gets exactly one
// result on the client's results subject (Results), even if no ingress runs
// at the moment. A job is one item (a batch is answered invalid_input).
// Only WithTimeout sets the job's deadline: ctx bounds the publish alone.
func (c *Client) Submit(ctx context.Context, req *wire.Request, opts ...CallOption) (*Job, error) {
	o := apply(opts)
	if o.idempotencyKey != "" {
		return nil, errors.New("client: WithIdempotencyKey applies to Infer; jobs take WithMsgID")
	}
	r := o.request(req)
	if r.ID == "" {
		r.ID = nuid.Next()
	}
	r.Client = c.client
	body, err := c.codec.EncodeRequest(&r)
	if err != nil {
		return nil, fmt.Errorf("client: encode job: %w", err)
	}
	msg := nats.NewMsg(wire.JobsSubject(c.pipeline, c.client))
	msg.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
	msg.Data = body
	stream := wire.JobsStream(c.pipeline)
	popts := []jetstream.PublishOpt{jetstream.WithExpectStream(stream)}
	if o.msgID != "" {
		popts = append(popts, jetstream.WithMsgID(o.msgID))
	}
	ack, err := c.js.PublishMsg(ctx, msg, popts...)
	if err != nil {
		return nil, fmt.Errorf("client: submit to %s: %w", msg.Subject, err)
	}
	return &Job{ID: r.ID, Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// ResultsOption configures Results.
type ResultsOption func(*resultsOptions)

type resultsOptions struct {
	prefetch int
	ackWait  time.Duration
}

// WithPrefetch sets how many results Results pulls ahead of the handler
// (default 16). Results pulled but not yet acknowledged count against the
// consumer's ack wait.
func WithPrefetch(n int) ResultsOption { return func(o *resultsOptions) { o.prefetch = n } }

// WithAckWait sets the consumer's ack wait (default 30 s, the server's): a
// result not acknowledged that long after its delivery is delivered again.
func WithAckWait(d time.Duration) ResultsOption { return func(o *resultsOptions) { o.ackWait = d } }

// ackTimeout bounds the acknowledgement of one result.
const ackTimeout = 5 * time.Second

// resultsPullExpiry is how long each pull request of Results lives on the
// server; handBackDelay, past it, is when a result handed back becomes
// deliverable again (see Results).
const (
	resultsPullExpiry = 5 * time.Second
	handBackDelay     = resultsPullExpiry + time.Second
)

// Results reads the client's results of durable jobs until ctx ends, and
// then returns ctx's error. It creates (or updates) the durable pull
// consumer named after the client on CASCADE_RESULTS, filtered to
// cascade.<pipeline>.result.<client>, so a later Results call goes on where
// this one stopped; one client has one such consumer, so it reads the
// results of one pipeline at a time.
//
// Each result is decoded by its Content-Type (a msgpack wire.Result, or
// the OIP v2 JSON body of a job sent as JSON) and handed to handle, one at a
// time, in the order delivered (stream order, but for results delivered
// again). A result is acknowledged once handle returns nil. If handle
// returns an error, the result is negatively acknowledged, to be delivered
// again after 6 s (past the 5 s life of Results' pull requests, which the
// server keeps after their reader has gone), and Results returns that error.
// A result that cannot be decoded is terminated (never delivered again) and
// Results returns an error naming it. When Results returns, the results it
// pulled ahead (WithPrefetch) but did not hand over are handed back the same
// way; any still in transit come again after the ack wait. Delivery is at
// least once: after a crash before an acknowledgement, a result comes again
// (its ID joins it to its job).
func (c *Client) Results(ctx context.Context, handle func(*wire.Result) error, opts ...ResultsOption) error {
	o := resultsOptions{prefetch: 16}
	for _, f := range opts {
		f(&o)
	}
	if o.prefetch < 1 {
		return fmt.Errorf("client: prefetch %d: want > 0", o.prefetch)
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, wire.ResultsStream, jetstream.ConsumerConfig{
		Durable:       c.client,
		FilterSubject: wire.ResultSubject(c.pipeline, c.client),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.ackWait,
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("client: results consumer %q on %s: %w", c.client, wire.ResultsStream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(o.prefetch), jetstream.PullExpiry(resultsPullExpiry))
	if err != nil {
		return fmt.Errorf("client: read results: %w", err)
	}
	defer it.Stop()
	// Drain, not Stop: results already pulled come out of Next and are
	// handed back (negatively acknowledged) at once instead of waiting out
	// the ack wait.
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	var failure error
	fail := func(err error) {
		failure = err
		it.Drain()
	}
	// handBack holds the results to hand back. They are negatively
	// acknowledged once the drained iterator has ended, with a delay past
	// the pull's expiry: the server keeps a pull request until it expires,
	// even after the reader has unsubscribed, and a result redelivered to
	// that stale request would be lost until the ack wait. After the delay
	// the next reader's pull gets it.
	var handBack []jetstream.Msg
	defer func() {
		for _, m := range handBack {
			_ = m.NakWithDelay(handBackDelay)
		}
	}()
	for {
		m, err := it.Next()
		if err != nil {
			switch {
			case failure != nil:
				return failure
			case ctx.Err() != nil:
				return ctx.Err()
			}
			return fmt.Errorf("client: read results: %w", err)
		}
		if failure != nil || ctx.Err() != nil {
			handBack = append(handBack, m)
			continue
		}
		var res wire.Result
		if err := wire.DecodeResultBody(m.Headers().Get(wire.HeaderContentType), m.Data(), &res); err != nil {
			_ = m.Term()
			fail(fmt.Errorf("client: result on %s (terminated): %w", m.Subject(), err))
			continue
		}
		if err := handle(&res); err != nil {
			handBack = append(handBack, m)
			fail(err)
			continue
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
		err = m.DoubleAck(actx)
		cancel()
		if err != nil {
			fail(fmt.Errorf("client: acknowledge result %s: %w", res.ID, err))
		}
	}
}
