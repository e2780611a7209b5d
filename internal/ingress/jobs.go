package ingress

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/cascadeserve/cascadeserve/internal/wire"
)

// maxJobsRetryDelay caps the growing redelivery delay of deferred jobs.
const maxJobsRetryDelay = 30 * time.Second

// runJobs binds the jobs consumer, pulls durable jobs and routes them until
// ctx ends; the batch in hand is always finished (its jobs are already
// delivered to us). A missing consumer (deleted, or not created yet) makes
// the ingress unready, is logged and counted, and is bound again as soon
// as it exists (the controller's topology repair re-creates it); accepted
// jobs wait in their stream meanwhile.
func (in *ingress) runJobs(ctx context.Context) {
	var cons jetstream.Consumer
	maxDeliver := 0
	for ctx.Err() == nil {
		if cons == nil {
			c, err := in.js.Consumer(ctx, wire.JobsStream(in.cfg.Pipeline), wire.JobsConsumer)
			if err != nil {
				if ctx.Err() == nil {
					in.jobsLost(err)
					sleep(ctx, in.cfg.PollInterval)
				}
				continue
			}
			cons, maxDeliver = c, 0
			if info := c.CachedInfo(); info != nil {
				maxDeliver = info.Config.MaxDeliver
			}
			in.jobsBound()
		}
		batch, err := cons.Fetch(in.cfg.JobsBatch, jetstream.FetchMaxWait(in.cfg.JobsMaxWait))
		if err != nil {
			if in.consumerGone(ctx, cons, err) {
				cons = nil
				continue
			}
			in.logger.Warn("fetch jobs", "err", err)
			sleep(ctx, in.cfg.PollInterval)
			continue
		}
		deferred := false
		for msg := range batch.Messages() {
			if in.handleJob(msg, maxDeliver) {
				deferred = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			if in.consumerGone(ctx, cons, err) {
				cons = nil
				continue
			}
			in.logger.Debug("fetch jobs", "err", err)
		}
		if deferred {
			// The first stage is full or NATS is failing: stop pulling jobs
			// we cannot place for a moment.
			sleep(ctx, in.cfg.JobsRetryDelay)
		}
	}
}

// consumerGone reports whether the jobs consumer no longer exists, after a
// pull failed with err; if so it records the loss.
func (in *ingress) consumerGone(ctx context.Context, cons jetstream.Consumer, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if !errors.Is(err, jetstream.ErrConsumerDeleted) && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		ictx, cancel := context.WithTimeout(ctx, in.cfg.PublishTimeout)
		_, err = cons.Info(ictx)
		cancel()
		if err == nil || !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return false
		}
	}
	in.jobsLost(err)
	return true
}

// jobsLost marks the jobs door down: the ingress reports unready until the
// consumer is bound again. The first failure of an outage is logged at
// error level and counted; repeats are not.
func (in *ingress) jobsLost(err error) {
	wasOK, reported := in.jobsOK.Swap(false), in.jobsSeenDown.Swap(true)
	if wasOK || !reported {
		in.metrics.jobsLost.Inc()
		in.logger.Error("the jobs consumer is missing: durable jobs wait in their stream until it is back; reporting unready",
			"stream", wire.JobsStream(in.cfg.Pipeline), "consumer", wire.JobsConsumer, "err", err)
	}
	in.metrics.jobsBound.Set(0)
	in.updateReady()
}

// jobsBound marks the jobs door up.
func (in *ingress) jobsBound() {
	if !in.jobsOK.Swap(true) && in.jobsSeenDown.Swap(false) {
		in.logger.Warn("the jobs consumer is back; routing durable jobs again")
	}
	in.metrics.jobsBound.Set(1)
	in.updateReady()
}

// handleJob routes one durable job and settles it; it reports whether the
// job was deferred (handed back for a later delivery).
//
// The job's producer already holds a PubAck, so the job must end with
// exactly one result on the results stream:
//   - admitted: Ack after the first stage's PubAck; the last stage publishes
//     the result (msg id `<id>.result`).
//   - duplicate (this job was admitted before: a redelivery after an ingress
//     crashed between PubAck and Ack, since a job's key is derived from its
//     stream sequence): Ack; the first admission makes the result.
//   - invalid_input or deadline_exceeded: publish the error result, await
//     its PubAck, Ack.
//   - overloaded (first queue full), unavailable or internal: NakWithDelay,
//     the delay doubling per delivery from JobsRetryDelay up to 30s; on the
//     consumer's last allowed delivery (MaxDeliver) the error itself is
//     published as the result instead, and the job Acked.
func (in *ingress) handleJob(msg jetstream.Msg, maxDeliver int) (deferred bool) {
	start := in.now()
	var delivered uint64 = 1
	// The job's key is stable across its redeliveries and unique among
	// jobs: a redelivered job is deduplicated at the first stage, and two
	// jobs with the same id (of one client or of two) are two admissions,
	// each answered on its own client's subject.
	key := "j" + nuid.Next()
	if meta, err := msg.Metadata(); err == nil {
		delivered = meta.NumDelivered
		key = "j" + strconv.FormatUint(meta.Sequence.Stream, 10) + "-" + strconv.FormatInt(meta.Timestamp.UnixNano(), 36)
	}
	client := strings.TrimPrefix(msg.Subject(), wire.JobsSubject(in.cfg.Pipeline, ""))
	contentType := msg.Headers().Get(wire.HeaderContentType)
	// A job sent as JSON gets its result, error or answer, as JSON.
	format := wire.ResultFormatFor(contentType)
	var req wire.Request
	err := func() error {
		if !wire.ValidToken(client) {
			return wire.Errorf(wire.CodeInvalidInput, "jobs subject %q: the client token after %q must be 1-64 letters, digits, '-' or '_'",
				msg.Subject(), wire.JobsSubject(in.cfg.Pipeline, ""))
		}
		if err := in.decode(contentType, msg.Data(), &req); err != nil {
			return err
		}
		_, err := in.admit(admission{door: doorJobs, req: &req, start: start, durable: true, resultFormat: format, client: client, key: key})
		return err
	}()
	code := wire.CodeOf(err)
	switch {
	case err == nil:
		in.ack(msg)
		in.countAdmitted(doorJobs)
		return false
	case code == wire.CodeDuplicate:
		in.ack(msg)
		in.countRejected(doorJobs, err)
		return false
	case code == wire.CodeOverloaded || code == wire.CodeUnavailable || code == wire.CodeInternal:
		if maxDeliver <= 0 || delivered < uint64(maxDeliver) {
			delay := min(in.cfg.JobsRetryDelay<<min(delivered-1, 20), maxJobsRetryDelay)
			if nerr := msg.NakWithDelay(delay); nerr != nil {
				in.logger.Warn("nak job", "subject", msg.Subject(), "err", nerr)
			}
			in.metrics.requests.WithLabelValues(doorJobs, outcomeDeferred).Inc()
			in.logger.Debug("job deferred", "subject", msg.Subject(), "delivered", delivered, "delay", delay, "err", err)
			return true
		}
		in.logger.Warn("job failed on its last delivery; publishing the error as its result", "subject", msg.Subject(), "err", err)
	}
	// A permanent verdict (or the last try): the error is the job's result.
	id := req.ID
	if !wire.ValidToken(id) {
		id = key
	}
	if perr := in.publishJobError(id, key, client, format, err); perr != nil {
		in.logger.Warn("publish job error result; retrying the job later", "id", id, "err", perr)
		if nerr := msg.NakWithDelay(in.cfg.JobsRetryDelay); nerr != nil {
			in.logger.Warn("nak job", "subject", msg.Subject(), "err", nerr)
		}
		in.metrics.requests.WithLabelValues(doorJobs, outcomeDeferred).Inc()
		return true
	}
	in.ack(msg)
	in.countRejected(doorJobs, err)
	return false
}

// publishJobError publishes an error result for a job on the results
// stream (msg id wire.ResultMsgID of the job's key, so a retried publish is
// deduplicated) and
// awaits its PubAck. It is written in the job's result format, as the
// workers write answers: the OIP JSON error body {"id", "error", "code"}
// for a job sent as JSON, else a msgpack wire.Result; the headers
// Content-Type and Cascade-Error say which and why. The subject mirrors the
// job's: a job published on JobsSubject(p, X) gets its result on
// ResultSubject(p, X), even when X is not a valid client token.
func (in *ingress) publishJobError(id, key, client, format string, err error) error {
	res := &wire.Result{ID: id, Pipeline: in.cfg.Pipeline, Client: client, Error: wireError(err), CompletedUnixNano: in.now().UnixNano()}
	b, contentType, encErr := in.codec.EncodeResultAs(res, format)
	if encErr != nil {
		return encErr
	}
	out := nats.NewMsg(wire.ResultSubject(in.cfg.Pipeline, client))
	out.Data = b
	out.Header.Set(wire.HeaderContentType, contentType)
	out.Header.Set(wire.HeaderError, string(res.Error.Code))
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.PublishTimeout)
	defer cancel()
	_, perr := in.js.PublishMsg(ctx, out, jetstream.WithMsgID(wire.ResultMsgID(in.cfg.Pipeline, key)))
	return perr
}

func (in *ingress) ack(msg jetstream.Msg) {
	if err := msg.Ack(); err != nil {
		in.logger.Warn("ack job", "subject", msg.Subject(), "err", err)
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
