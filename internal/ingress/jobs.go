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

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
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
					natsbus.Sleep(ctx, in.cfg.PollInterval)
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
			natsbus.Sleep(ctx, in.cfg.PollInterval)
			continue
		}
		// Every job of the batch joins the envelopes first; then each is
		// settled as its envelope's PubAck says.
		var started []*job
		for msg := range batch.Messages() {
			started = append(started, in.startJob(msg))
		}
		deferred := false
		for _, j := range started {
			if in.finishJob(j, maxDeliver) {
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
			natsbus.Sleep(ctx, in.cfg.JobsRetryDelay)
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

// job is one durable job between its admission and its settling.
type job struct {
	msg       jetstream.Msg
	start     time.Time
	delivered uint64
	key       string
	client    string
	format    string
	req       wire.Request
	ticket    *ticket // nil when the job failed before admission
	err       error   // the failure before admission
}

// startJob decodes and validates one durable job and hands its item to the
// envelope coalescer.
//
// The job's key is stable across its redeliveries and unique among jobs:
// two jobs with the same id (of one client or of two) are two admissions,
// each answered on its own client's subject, and a job redelivered after
// an ingress crashed between its envelope's PubAck and its Ack is computed
// again but keeps one result: results are deduplicated by their message id
// (wire.ResultMsgID of the key) on the results stream.
func (in *ingress) startJob(msg jetstream.Msg) *job {
	j := &job{msg: msg, start: in.now(), delivered: 1, key: "j" + nuid.Next()}
	if meta, err := msg.Metadata(); err == nil {
		j.delivered = meta.NumDelivered
		j.key = "j" + strconv.FormatUint(meta.Sequence.Stream, 10) + "-" + strconv.FormatInt(meta.Timestamp.UnixNano(), 36)
	}
	j.client = strings.TrimPrefix(msg.Subject(), wire.JobsSubject(in.cfg.Pipeline, ""))
	contentType := msg.Headers().Get(wire.HeaderContentType)
	// A job sent as JSON gets its result, error or answer, as JSON.
	j.format = wire.ResultFormatFor(contentType)
	if !wire.ValidToken(j.client) {
		j.err = wire.Errorf(wire.CodeInvalidInput, "jobs subject %q: the client token after %q must be 1-64 letters, digits, '-' or '_'",
			msg.Subject(), wire.JobsSubject(in.cfg.Pipeline, ""))
		return j
	}
	if err := in.decode(contentType, msg.Data(), &j.req); err != nil {
		j.err = err
		return j
	}
	it, first, err := in.prepare(admission{door: doorJobs, req: &j.req, start: j.start, durable: true, resultFormat: j.format, client: j.client, key: j.key})
	if err != nil {
		j.err = err
		return j
	}
	j.ticket = in.envelopes.add(it, first)
	return j
}

// finishJob settles one job once its admission is decided; it reports
// whether the job was deferred (handed back for a later delivery).
//
// The job's producer already holds a PubAck, so the job must end with
// exactly one result on the results stream. natsbus.DecideAck, the stage
// workers' decision too, says which:
//   - admitted: Ack after its envelope's PubAck; the last stage publishes
//     the result.
//   - a permanent error (invalid_input, deadline_exceeded): publish the
//     error result, await its PubAck, Ack.
//   - a transient one (overloaded: first queue full; unavailable;
//     internal): NakWithDelay, the delay doubling per delivery from
//     JobsRetryDelay up to 30s; on the consumer's last allowed delivery
//     (MaxDeliver) the error itself is published as the result instead,
//     and the job Acked.
func (in *ingress) finishJob(j *job, maxDeliver int) (deferred bool) {
	err := j.err
	if j.ticket != nil {
		err = j.ticket.wait()
	}
	msg := j.msg
	switch natsbus.DecideAck(err, j.delivered, maxDeliver) {
	case natsbus.AckDone:
		in.metrics.admission.WithLabelValues(doorJobs).Observe(in.now().Sub(j.start).Seconds())
		in.ack(msg)
		in.countAdmitted(doorJobs)
		return false
	case natsbus.AckRetry:
		delay := min(in.cfg.JobsRetryDelay<<min(j.delivered-1, 20), maxJobsRetryDelay)
		if nerr := msg.NakWithDelay(delay); nerr != nil {
			in.logger.Warn("nak job", "subject", msg.Subject(), "err", nerr)
		}
		in.metrics.requests.WithLabelValues(doorJobs, outcomeDeferred).Inc()
		in.logger.Debug("job deferred", "subject", msg.Subject(), "delivered", j.delivered, "delay", delay, "err", err)
		return true
	case natsbus.AckLastTry:
		in.logger.Warn("job failed on its last delivery; publishing the error as its result", "subject", msg.Subject(), "err", err)
	}
	// A permanent verdict (or the last try): the error is the job's result.
	id := j.req.ID
	if !wire.ValidToken(id) {
		id = j.key
	}
	if perr := in.publishJobError(id, j.key, j.client, j.format, err); perr != nil {
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
