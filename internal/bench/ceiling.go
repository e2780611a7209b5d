package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// CeilingConfig configures MeasureCeiling. Zero values take the defaults in
// the field comments.
type CeilingConfig struct {
	// Batches are the fetch sizes tried, one run each (default 64 and 128,
	// the max batches the pipeline's gears use); the best run is the
	// ceiling.
	Batches []int
	// Rounds is how often every batch size is measured, in turn (default
	// 2): the ceiling is the best run, and the first runs of a process
	// are often slower (a cold server and heap).
	Rounds int
	// Fetchers is the number of goroutines that fetch and ack (default 2,
	// the worker's default runner count). They share one connection, as the
	// runners of one worker do; the publisher has its own, as ingress does.
	Fetchers int
	// Messages is how many messages each run publishes (default 20000).
	Messages int
	// Backlog bounds the messages published and not yet acked (default
	// 4096), so the bounded work queue never rejects a publish.
	Backlog int
	// Payload is each message's body (default: PayloadLike(784), an
	// encoded in-flight item of one MNIST image, about 3.2 KB).
	Payload []byte
	// FetchWait is the fetch's max wait for a batch to fill (default 5ms,
	// the order of the gears' max delays).
	FetchWait time.Duration
}

func (c CeilingConfig) withDefaults() CeilingConfig {
	if len(c.Batches) == 0 {
		c.Batches = []int{64, 128}
	}
	orDefault(&c.Rounds, 2)
	orDefault(&c.Fetchers, 2)
	orDefault(&c.Messages, 20000)
	orDefault(&c.Backlog, 4096)
	if c.Payload == nil {
		c.Payload = PayloadLike(784)
	}
	orDefault(&c.FetchWait, 5*time.Millisecond)
	return c
}

// CeilingRun is one run of the ceiling measurement at one fetch size.
type CeilingRun struct {
	Batch    int `json:"batch"`
	Fetchers int `json:"fetchers"`
	// Messages were published; Received counts deliveries (duplicates
	// included), Missing those never delivered and Duplicates those
	// delivered more than once. A correct run has Received = Messages and
	// no missing or duplicate message.
	Messages   int `json:"messages"`
	Received   int `json:"received"`
	Missing    int `json:"missing"`
	Duplicates int `json:"duplicates"`
	// Fetches is the number of non-empty fetches; MeanBatch the mean
	// messages per fetch.
	Fetches   int     `json:"fetches"`
	MeanBatch float64 `json:"mean_batch"`
	// Seconds runs from the first publish to the last ack.
	Seconds float64 `json:"seconds"`
	// HopsPerSec is Messages / Seconds: item-hops (publish with PubAck,
	// fetch, ack) per second.
	HopsPerSec float64 `json:"hops_per_sec"`
}

// Ceiling is the item-hop ceiling: the best of the runs.
type Ceiling struct {
	PayloadBytes int `json:"payload_bytes"`
	// Runs lists every run, round after round.
	Runs []CeilingRun `json:"runs"`
	Best CeilingRun   `json:"best"`
}

// PayloadLike returns an encoded in-flight item (wire.Item) holding one
// FP32 tensor of the given number of values, as ingress publishes it to a
// model's work queue: the message size of the pipeline's hops.
func PayloadLike(values int) []byte {
	it := wire.Item{
		V:                1,
		ID:               "0123456789abcdefghijkl",
		Pipeline:         "mnist",
		Client:           "loadgen",
		Input:            wire.FP32Tensor([]int64{int64(values)}, make([]float32, values)),
		DeadlineUnixNano: time.Now().UnixNano(),
		ReplyTo:          "_INBOX.0123456789abcdefghijkl.12345",
		AdmittedGear:     "cheap",
		AdmittedUnixNano: time.Now().UnixNano(),
		EnqueuedUnixNano: time.Now().UnixNano(),
	}
	b, err := wire.NewCodec().EncodeItem(&it)
	if err != nil {
		// Encoding a well-formed item cannot fail.
		panic(fmt.Sprintf("bench: encode payload: %v", err))
	}
	return b
}

// MeasureCeiling measures the publish→fetch→ack ceiling of the JetStream
// server at url: Rounds times for each fetch size, on one work-queue stream
// configured exactly as a model's work queue (natsbus.ModelStreamConfig:
// file storage, DiscardNew, dedup window) and, per run, a durable pull
// consumer of its own; one publisher sends Messages items asynchronously
// with a Nats-Msg-Id each, as ingress and workers do, and Fetchers
// goroutines Fetch(batch) and Ack every message. Each run's consumer is
// deleted after it, the stream at the end.
func MeasureCeiling(ctx context.Context, url string, cfg CeilingConfig) (Ceiling, error) {
	cfg = cfg.withDefaults()
	for _, b := range cfg.Batches {
		if b < 1 {
			return Ceiling{}, fmt.Errorf("ceiling: batch size %d < 1", b)
		}
	}
	// A rejected publish fails the pass in progress.
	var pubErr atomic.Pointer[func(error)]
	c, err := dialClients(url, "cascadeserve-bench",
		jetstream.WithPublishAsyncMaxPending(cfg.Backlog),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			if f := pubErr.Load(); f != nil {
				(*f)(fmt.Errorf("publish %s: %w", m.Header.Get(jetstream.MsgIDHeader), err))
			}
		}))
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: %w", err)
	}
	defer c.Close()
	// One stream for every run: creating and deleting a file-backed
	// stream per run is churn the measurement does not need.
	scfg := natsbus.ModelStreamConfig(ceilingPipeline, ceilingModel, natsbus.TopologyConfig{})
	stream, err := createStream(ctx, c.pjs, scfg)
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: create stream %s: %w", scfg.Name, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = c.pjs.DeleteStream(dctx, scfg.Name)
	}()
	r := ceilingRunner{cfg: cfg, pjs: c.pjs, sjs: c.sjs, pubErr: &pubErr, subConn: c.sub, stream: stream,
		subject: wire.ModelSubject(ceilingPipeline, ceilingModel)}
	out := Ceiling{PayloadBytes: len(cfg.Payload)}
	for round := range cfg.Rounds {
		for i, b := range cfg.Batches {
			run, err := r.run(ctx, fmt.Sprintf("ceiling%d_%d_%d", round, i, b), b)
			if err != nil {
				return Ceiling{}, fmt.Errorf("ceiling: batch %d: %w", b, err)
			}
			out.Runs = append(out.Runs, run)
			if run.HopsPerSec > out.Best.HopsPerSec {
				out.Best = run
			}
		}
	}
	return out, nil
}

// streamStoreFailed is the error code of a stream creation the server
// failed for a reason it only logs ("error creating store for stream").
const streamStoreFailed jetstream.ErrorCode = 10049

// createStream creates the ceiling's stream, trying a second and third
// time after a pause when the server failed to create its store: seen once,
// on a CI machine, and not reproducible; a bench should not fail on a
// hiccup of the server's disk. Any other error, or a third failure, is
// returned.
func createStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	for attempt := 1; ; attempt++ {
		stream, err := js.CreateOrUpdateStream(ctx, cfg)
		var apiErr *jetstream.APIError
		if err == nil || attempt == 3 || !errors.As(err, &apiErr) || apiErr.ErrorCode != streamStoreFailed {
			return stream, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
	}
}

// ceilingPipeline and ceilingModel name the ceiling's stream
// (CASCADE_BENCH_CEILING): run the measurement on a server of its own, not
// one serving a pipeline called "bench".
const (
	ceilingPipeline = "bench"
	ceilingModel    = "ceiling"
)

// stallTimeout fails a run that makes no progress for this long.
const stallTimeout = 15 * time.Second

// ceilingRunner holds what the runs of one MeasureCeiling share.
type ceilingRunner struct {
	cfg      CeilingConfig
	pjs, sjs jetstream.JetStream
	pubErr   *atomic.Pointer[func(error)]
	subConn  *nats.Conn
	stream   jetstream.Stream
	subject  string
}

// run measures one fetch size with a consumer called name, deleted after
// the run, which also purges the stream. Message ids start with the run's name, so the stream's dedup
// window never drops a later run's message as a repeat of an earlier one.
func (r *ceilingRunner) run(ctx context.Context, name string, batch int) (CeilingRun, error) {
	topo := natsbus.TopologyConfig{MaxAckPending: max(4096, 2*batch*r.cfg.Fetchers)}
	if _, err := r.stream.CreateOrUpdateConsumer(ctx, natsbus.ModelConsumerConfig(name, topo)); err != nil {
		return CeilingRun{}, fmt.Errorf("create consumer: %w", err)
	}
	defer func() {
		// Acks travel asynchronously: a message whose ack the server had
		// not processed when the consumer went would reach the next run's
		// consumer. The purge leaves the next run an empty queue.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = r.stream.DeleteConsumer(dctx, name)
		_ = r.stream.Purge(dctx)
	}()
	cons, err := r.sjs.Consumer(ctx, r.stream.CachedInfo().Config.Name, name)
	if err != nil {
		return CeilingRun{}, fmt.Errorf("bind consumer: %w", err)
	}
	// A first, shorter pass warms the server up (new message blocks, its
	// buffers, the consumer) and is not measured.
	if _, err := r.pass(ctx, cons, batch, name+"w", max(r.cfg.Messages/5, batch*r.cfg.Fetchers)); err != nil {
		return CeilingRun{}, fmt.Errorf("warm-up: %w", err)
	}
	return r.pass(ctx, cons, batch, name+"m", r.cfg.Messages)
}

// pass publishes n messages with ids prefix0 … prefix<n-1>, fetches them
// through cons in batches and acks them all, and reports the pass.
func (r *ceilingRunner) pass(ctx context.Context, cons jetstream.Consumer, batch int, prefix string, n int) (CeilingRun, error) {
	ps := newCeilingPass(ctx, r, cons, batch, prefix, n)
	defer ps.cancel()
	fail := ps.fail
	r.pubErr.Store(&fail)
	defer r.pubErr.Store(nil)
	var wg sync.WaitGroup

	start := time.Now()
	for range r.cfg.Fetchers {
		wg.Go(ps.fetch)
	}
	wg.Go(ps.publish)
	ps.await()
	// Acks are asynchronous: the pass ends when the server has them all,
	// which a flush (a round trip behind them) guarantees.
	flushErr := r.subConn.Flush()
	end := time.Now()
	ps.cancel()
	wg.Wait()
	select {
	case err := <-ps.errs:
		return CeilingRun{}, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return CeilingRun{}, err
	}
	if flushErr != nil {
		return CeilingRun{}, fmt.Errorf("flush acks: %w", flushErr)
	}
	return ps.result(end.Sub(start)), nil
}

// ceilingPass is one pass in flight: what its fetchers, its publisher and
// the wait for its last ack share. The first failure is kept in errs and
// cancels ctx, which stops them all.
type ceilingPass struct {
	r      *ceilingRunner
	cons   jetstream.Consumer
	batch  int
	prefix string
	n      int

	ctx    context.Context
	cancel context.CancelFunc
	errs   chan error
	// seen counts the deliveries of each message, by index.
	seen     []atomic.Int32
	received atomic.Int64
	fetches  atomic.Int64
	// tokens bounds the backlog: the publisher takes one per message, a
	// fetcher returns one per ack.
	tokens   chan struct{}
	done     chan struct{}
	doneOnce sync.Once
}

// newCeilingPass prepares a pass of n messages under ctx; the caller
// cancels it when the pass is over.
func newCeilingPass(ctx context.Context, r *ceilingRunner, cons jetstream.Consumer, batch int, prefix string, n int) *ceilingPass {
	ps := &ceilingPass{
		r: r, cons: cons, batch: batch, prefix: prefix, n: n,
		errs:   make(chan error, r.cfg.Fetchers+2),
		seen:   make([]atomic.Int32, n),
		tokens: make(chan struct{}, r.cfg.Backlog),
		done:   make(chan struct{}),
	}
	ps.ctx, ps.cancel = context.WithCancel(ctx)
	return ps
}

// fail records err, unless an error is already waiting, and stops the
// pass.
func (ps *ceilingPass) fail(err error) {
	select {
	case ps.errs <- err:
	default:
	}
	ps.cancel()
}

// fetch is one fetcher: it fetches batches and acks every message, checking
// its id, until the pass stops; done closes with the n-th ack.
func (ps *ceilingPass) fetch() {
	n, prefix := ps.n, ps.prefix
	for ps.ctx.Err() == nil {
		mb, err := ps.cons.Fetch(ps.batch, jetstream.FetchMaxWait(ps.r.cfg.FetchWait))
		if err != nil {
			ps.fail(fmt.Errorf("fetch: %w", err))
			return
		}
		got := 0
		for m := range mb.Messages() {
			got++
			id := m.Headers().Get(jetstream.MsgIDHeader)
			i, err := strconv.Atoi(strings.TrimPrefix(id, prefix))
			if err != nil || i < 0 || i >= n || !strings.HasPrefix(id, prefix) {
				ps.fail(fmt.Errorf("message with id %q", id))
				return
			}
			ps.seen[i].Add(1)
			if err := m.Ack(); err != nil {
				ps.fail(fmt.Errorf("ack: %w", err))
				return
			}
			<-ps.tokens
			if ps.received.Add(1) == int64(n) {
				ps.doneOnce.Do(func() { close(ps.done) })
			}
		}
		if err := mb.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			ps.fail(fmt.Errorf("fetch: %w", err))
			return
		}
		if got > 0 {
			ps.fetches.Add(1)
		}
	}
}

// publish sends the pass's n messages asynchronously, each after taking a
// backlog token. PubAcks are checked as they come back (the error handler);
// the async window and the backlog tokens keep the publisher from running
// away.
func (ps *ceilingPass) publish() {
	cfg, pjs, subject := ps.r.cfg, ps.r.pjs, ps.r.subject
	for i := range ps.n {
		select {
		case ps.tokens <- struct{}{}:
		case <-ps.ctx.Done():
			return
		}
		m := &nats.Msg{Subject: subject, Data: cfg.Payload, Header: nats.Header{jetstream.MsgIDHeader: []string{ps.prefix + strconv.Itoa(i)}}}
		if _, err := pjs.PublishMsgAsync(m); err != nil {
			ps.fail(fmt.Errorf("publish %d: %w", i, err))
			return
		}
	}
}

// await returns with the last ack or once the pass stops; a pass that
// makes no progress for stallTimeout fails.
func (ps *ceilingPass) await() {
	watch := time.NewTicker(time.Second)
	defer watch.Stop()
	progress, progressAt := int64(-1), time.Now()
	for {
		select {
		case <-ps.done:
			return
		case <-ps.ctx.Done():
			return
		case now := <-watch.C:
			if r := ps.received.Load(); r != progress {
				progress, progressAt = r, now
			} else if now.Sub(progressAt) > stallTimeout {
				ps.fail(fmt.Errorf("stalled at %d of %d messages", r, ps.n))
			}
		}
	}
}

// result reports a finished pass that took elapsed: its counts and rate.
func (ps *ceilingPass) result(elapsed time.Duration) CeilingRun {
	run := CeilingRun{Batch: ps.batch, Fetchers: ps.r.cfg.Fetchers, Messages: ps.n, Received: int(ps.received.Load()), Fetches: int(ps.fetches.Load())}
	for i := range ps.seen {
		switch c := ps.seen[i].Load(); {
		case c == 0:
			run.Missing++
		case c > 1:
			run.Duplicates++
		}
	}
	if run.Fetches > 0 {
		run.MeanBatch = float64(run.Received) / float64(run.Fetches)
	}
	run.Seconds = elapsed.Seconds()
	if run.Seconds > 0 {
		run.HopsPerSec = float64(ps.n) / run.Seconds
	}
	return run
}
