package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"golang.org/x/sync/errgroup"

	"github.com/cascadeserve/cascadeserve/internal/controlstate"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// ingress is one running instance.
type ingress struct {
	cfg      Config
	instance string
	logger   *slog.Logger
	now      func() time.Time
	nc       *nats.Conn
	js       jetstream.JetStream
	codec    *wire.Codec
	metrics  *metrics
	ctl      *controlstate.Follower
	replies  *replyMux
	// envelopes coalesces admitted items into envelopes.
	envelopes *coalescer
	// idemKV is the idempotency bucket, bound at the first request with an
	// Idempotency-Key (idemBucket).
	idemMu sync.Mutex
	idemKV jetstream.KeyValue

	// ready is true while intake is open: plan and topology known, not
	// shutting down. jobsOK is true while the jobs consumer is bound (or
	// the jobs door is off); the ingress reports ready only with both.
	// jobsSeenDown is set once a loss of the consumer was reported.
	ready        atomic.Bool
	jobsOK       atomic.Bool
	jobsSeenDown atomic.Bool
	// readyMu makes updateReady's read of the state and write of the
	// gauge one step, so that two updates racing cannot leave the gauge
	// saying what the state no longer is.
	readyMu sync.Mutex
	// admittedN and rejectedN are the cumulative counters of IngressStats.
	admittedN, rejectedN atomic.Uint64
	// envelopesN and envelopeItemsN count the envelopes published to first
	// stages and their items (IngressStats.Envelopes, EnvelopeItems).
	envelopesN, envelopeItemsN atomic.Uint64

	// overloaded is the prepared answer of requests shed at intake.
	overloaded overloadedReply
	// lastRefusalLog rate-limits the log of refused reply subjects (unix ns).
	lastRefusalLog atomic.Int64

	// slots bounds the NATS requests handled at once; handlers tracks
	// their goroutines.
	slots    chan struct{}
	handlers sync.WaitGroup
	// abort is closed when shutdown stops waiting for in-flight requests:
	// callers still waiting for a result are answered unavailable.
	abort     chan struct{}
	abortOnce sync.Once
}

// Run serves as an ingress until ctx ends, then shuts down cleanly and
// returns nil. See the package documentation for what it does and its
// shutdown order.
func Run(ctx context.Context, cfg Config, deps Deps) error {
	in, err := newIngress(cfg, deps)
	if err != nil {
		return err
	}
	defer func() { _ = in.replies.close() }()
	// The HTTP endpoint answers at once (live, and ready=false until the
	// plan and topology are there).
	srv, ln, err := in.httpServer(deps.HTTPListener)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	// The coalescer outlives intake: it stops after every door has closed,
	// publishing what is queued (its callers wait for it).
	stopEnvelopes := in.startEnvelopes()
	defer stopEnvelopes()
	if srv != nil {
		g.Go(func() error {
			if err := cfg.HTTP.Serve(srv, ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("ingress: http: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error { in.publishStats(gctx); return nil })
	g.Go(func() error {
		// Waits for the bucket, and binds it again if it is recreated.
		return natsbus.WatchControl(gctx, in.js, wire.KVBucket(cfg.Pipeline), cfg.PollInterval, in.logger, in.ctl.Apply)
	})
	g.Go(func() error { return in.intake(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		in.stop(srv)
		return nil
	})
	err = g.Wait()
	in.logger.Info("ingress stopped", "admitted", in.admittedN.Load(), "rejected", in.rejectedN.Load())
	return err
}

// newIngress validates cfg and builds an ingress from deps: its instance
// name, metrics, JetStream handle, control follower, prepared overload
// answer and reply multiplexer (the caller closes in.replies). It serves
// nothing yet.
func newIngress(cfg Config, deps Deps) (*ingress, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d, err := deps.WithDefaults("ingress")
	if err != nil {
		return nil, err
	}
	in := &ingress{cfg: cfg, instance: cfg.Instance, logger: d.Logger, now: d.Now, nc: d.Conn,
		codec: wire.NewCodec(), slots: make(chan struct{}, cfg.MaxInFlight), abort: make(chan struct{})}
	if in.instance == "" {
		in.instance = nuid.Next()
	}
	in.logger = in.logger.With("instance", in.instance)
	in.metrics = newMetrics(d.Registerer)
	if in.js, err = jetstream.New(d.Conn); err != nil {
		return nil, fmt.Errorf("ingress: jetstream: %w", err)
	}
	in.ctl = newWatcher(cfg.Pipeline, in.logger, in.metrics)
	if in.overloaded, err = newOverloadedReply(in.codec, cfg.Pipeline, in.instance); err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	if in.replies, err = newReplyMux(d.Conn, cfg.InboxPrefixes[0]+in.instance+"."); err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	return in, nil
}

// httpServer returns the HTTP server of the Open Inference Protocol and
// the listener it serves on: ln if set, else one on cfg.HTTPAddr; a nil
// server when there is neither (the HTTP door is off).
func (in *ingress) httpServer(ln net.Listener) (*http.Server, net.Listener, error) {
	cfg := in.cfg
	if ln == nil && cfg.HTTPAddr != "" {
		var err error
		if ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, nil, fmt.Errorf("ingress: http listener: %w", err)
		}
	}
	if ln == nil {
		return nil, nil, nil
	}
	srv := &http.Server{
		Handler:           cfg.HTTP.Wrap(in.handler()),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      cfg.MaxTimeout + cfg.ReplyGrace + 10*time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(in.logger.Handler(), slog.LevelWarn),
	}
	in.logger.Info("serving Open Inference Protocol v2 over HTTP", "addr", ln.Addr().String(),
		"tls", cfg.HTTP.TLS(), "bearer_token", cfg.HTTP.BearerToken != "")
	return srv, ln, nil
}

// startEnvelopes starts the coalescer on a context of its own and returns
// the function that stops it and waits until it has published what was
// queued.
func (in *ingress) startEnvelopes() (stop func()) {
	in.envelopes = newCoalescer(in)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); in.envelopes.run(ctx) }()
	return func() { cancel(); <-done }
}

// stop closes intake's readiness and shuts the HTTP server (if any) down
// within ShutdownTimeout; requests still in flight then are answered
// unavailable and get a second to be written.
func (in *ingress) stop(srv *http.Server) {
	in.logger.Info("ingress stopping")
	in.ready.Store(false)
	in.updateReady()
	if srv == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.Background(), in.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		in.logger.Warn("HTTP requests still in flight at the shutdown bound; answering them unavailable", "err", err)
		in.abortWaiters()
		// Give the woken handlers a moment to write their answers.
		actx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := srv.Shutdown(actx); err != nil {
			_ = srv.Close()
		}
	}
}

// intake opens the NATS doors once the plan and topology are known, and
// closes them when ctx ends: it drains the request subscription, lets the
// jobs loop finish its batch, and waits (bounded) for requests in flight.
func (in *ingress) intake(ctx context.Context) error {
	select {
	case <-in.ctl.Ready():
	case <-ctx.Done():
		return nil
	}
	c := in.ctl.Load()
	in.logger.Info("plan received; waiting for the topology", "models", c.Plan.UsedModels())
	if err := natsbus.WaitTopology(ctx, in.js, in.cfg.Pipeline, c.Plan.UsedModels(), c.Plan.QueuePartitions(), in.cfg.PollInterval); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("ingress: %w", err)
	}
	sub, err := in.nc.QueueSubscribe(wire.InferSubject(in.cfg.Pipeline), wire.IngressQueue, in.onRequest)
	if err != nil {
		return fmt.Errorf("ingress: subscribe %s: %w", wire.InferSubject(in.cfg.Pipeline), err)
	}
	closed := sub.StatusChanged(nats.SubscriptionClosed)
	if err := sub.SetPendingLimits(in.cfg.PendingMsgs, in.cfg.PendingBytes); err != nil {
		return fmt.Errorf("ingress: pending limits: %w", err)
	}
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); in.watchPending(ctx, sub) }()
	defer func() { <-watchDone }()
	in.ready.Store(true)
	in.updateReady()
	in.logger.Info("ingress ready", "pipeline", in.cfg.Pipeline, "gear", c.State.Gear, "first_model", firstModel(c),
		"subject", wire.InferSubject(in.cfg.Pipeline), "jobs", in.cfg.JobsBatch > 0)

	jobsDone := make(chan struct{})
	go func() {
		defer close(jobsDone)
		if in.cfg.JobsBatch > 0 {
			in.runJobs(ctx)
		}
	}()

	<-ctx.Done()
	in.ready.Store(false)
	in.updateReady()
	// Stop taking requests; those already delivered to us are still handled.
	bound := time.NewTimer(in.cfg.ShutdownTimeout)
	defer bound.Stop()
	if err := sub.Drain(); err != nil {
		in.logger.Warn("drain request subscription", "err", err)
		_ = sub.Unsubscribe()
	} else {
		select {
		case <-closed:
		case <-bound.C:
			in.logger.Warn("request subscription not drained at the shutdown bound")
			_ = sub.Unsubscribe()
		}
	}
	<-jobsDone
	// No callback runs any more, so no handler is added: wait for them.
	done := make(chan struct{})
	go func() { in.handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-bound.C:
		in.logger.Warn("NATS requests still in flight at the shutdown bound; answering them unavailable")
		in.abortWaiters()
		<-done
	}
	return nil
}

// watchPending exports the request subscription's pending messages and
// counts what the client library dropped (it should be nothing: intake
// sheds at half the limits) until ctx ends.
func (in *ingress) watchPending(ctx context.Context, sub *nats.Subscription) {
	t := time.NewTicker(in.cfg.StatsInterval)
	defer t.Stop()
	var dropped int
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, _, err := sub.Pending(); err == nil {
			in.metrics.pending.Set(float64(n))
		}
		if d, err := sub.Dropped(); err == nil && d > dropped {
			in.metrics.dropped.Add(float64(d - dropped))
			in.logger.Error("the NATS client dropped requests: they get no answer", "dropped", d-dropped)
			dropped = d
		}
	}
}

// serving reports whether every door is open: what /v2/health/ready and
// cascade_ingress_ready say.
func (in *ingress) serving() bool {
	return in.ready.Load() && (in.cfg.JobsBatch == 0 || in.jobsOK.Load())
}

func (in *ingress) updateReady() {
	in.readyMu.Lock()
	defer in.readyMu.Unlock()
	if in.serving() {
		in.metrics.Ready.Set(1)
	} else {
		in.metrics.Ready.Set(0)
	}
}

func (in *ingress) abortWaiters() { in.abortOnce.Do(func() { close(in.abort) }) }

// publishStats publishes the cumulative admission counters every
// StatsInterval, and once more when ctx ends.
func (in *ingress) publishStats(ctx context.Context) {
	subject := wire.StatsSubject(in.cfg.Pipeline, in.instance)
	publish := func() {
		b, _ := json.Marshal(wire.IngressStats{Instance: in.instance, Admitted: in.admittedN.Load(),
			Rejected: in.rejectedN.Load(), Envelopes: in.envelopesN.Load(), EnvelopeItems: in.envelopeItemsN.Load(),
			AtUnixNano: in.now().UnixNano()})
		if err := in.nc.Publish(subject, b); err != nil {
			in.logger.Debug("publish ingress stats", "err", err)
		}
	}
	t := time.NewTicker(in.cfg.StatsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			publish()
			return
		case <-t.C:
			publish()
		}
	}
}

// countAdmitted records an admission.
func (in *ingress) countAdmitted(door string) {
	in.admittedN.Add(1)
	in.metrics.requests.WithLabelValues(door, outcomeAdmitted).Inc()
}

// countRejected records a typed-error answer at intake. A duplicate is not
// a rejection for the intake rate: its id was admitted once.
func (in *ingress) countRejected(door string, err error) {
	code := wire.CodeOf(err)
	if code != wire.CodeDuplicate {
		in.rejectedN.Add(1)
	}
	in.metrics.requests.WithLabelValues(door, string(code)).Inc()
}

// await waits for the result of an admitted item on ch until its deadline
// plus ReplyGrace. It returns ctx's error when the caller went away, and a
// *wire.Error when no result came (deadline_exceeded) or shutdown gave up
// (unavailable).
func (in *ingress) await(ctx context.Context, ch <-chan *nats.Msg, it *wire.Item) (*wire.Result, error) {
	wait := time.Unix(0, it.DeadlineUnixNano).Sub(in.now()) + in.cfg.ReplyGrace
	t := time.NewTimer(max(wait, 0))
	defer t.Stop()
	select {
	case msg := <-ch:
		var res wire.Result
		if err := wire.DecodeResultBody(msg.Header.Get(wire.HeaderContentType), msg.Data, &res); err != nil {
			return nil, wire.Errorf(wire.CodeInternal, "result of %s: %v", it.ID, err)
		}
		return &res, nil
	case <-t.C:
		return nil, wire.Errorf(wire.CodeDeadlineExceeded, "no result for %s by its deadline", it.ID)
	case <-in.abort:
		return nil, wire.Errorf(wire.CodeUnavailable, "ingress shutting down before the result of %s arrived", it.ID)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// wireError returns err as a *wire.Error (CodeInternal if it is none).
func wireError(err error) *wire.Error {
	var e *wire.Error
	if errors.As(err, &e) {
		return e
	}
	return &wire.Error{Code: wire.CodeInternal, Message: err.Error()}
}
