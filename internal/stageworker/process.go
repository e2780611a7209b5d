package stageworker

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// task is one input message, an envelope of items, while its batch is
// handled. The message is settled (acked, nak'd, terminated or
// dead-lettered) as one; its items are decided one by one.
type task struct {
	msg      jetstream.Msg
	meta     *jetstream.MsgMetadata // nil if the reply subject did not parse
	model    string                 // the model whose queue it came from
	received time.Time
	// id names the envelope: its ID, or for a version 1 single item
	// "s<stream sequence>" of its model's stream.
	id        string
	items     []*itemTask
	decodeErr error

	// js are the JetStream publishes (escalation envelopes, retries,
	// durable results, dead letters); core the core NATS publishes (reply
	// inboxes), sent once every js publish is acknowledged.
	js   []*nats.Msg
	core []*nats.Msg
	// grouped are the results of items of batched requests (ReplyBatched),
	// by reply subject: sent as one message per subject after js.
	grouped map[string][]wire.Result
	// escalations are the escalation envelopes among js, to answer their
	// items degraded if the next queue is full.
	escalations []escalation
	// err is the message's verdict, mapped to an ack by natsbus.DecideAck: nil,
	// permanent (undecodable) or a transient failure (a publish failed).
	err error
}

// escalation is one envelope of a task's items sent on to model next.
type escalation struct {
	index int // in task.js
	next  string
	items []*itemTask
	// rejected is set when the next queue refused the envelope as full.
	rejected bool
}

// itemTask is one item of a task.
type itemTask struct {
	t    *task
	item *wire.Item

	outcome string
	degrade string // reason, for a degraded answer
	// next is the model the item escalates to ("" if none); retry is set
	// when its model failed on it alone (it goes back to the queue).
	next  string
	retry error
	// answer is what a degraded fallback needs if the escalation is
	// rejected by a full queue.
	answer func(reason string)
}

func (w *worker) newTask(h *hosted, msg jetstream.Msg) *task {
	t := &task{msg: msg, model: h.name, received: w.now()}
	if meta, err := msg.Metadata(); err == nil {
		t.meta = meta
		if meta.NumDelivered > 1 {
			w.metrics.redeliveries.WithLabelValues(h.name).Inc()
		}
	}
	var env wire.Envelope
	if t.decodeErr = wire.DecodeEnvelope(msg.Data(), &env); t.decodeErr != nil {
		return t
	}
	t.id = env.ID
	if t.id == "" || !validEnvelopeID(t.id) {
		t.id = "s" + strconv.FormatUint(t.streamSeq(), 10) + "." + h.name
	}
	t.items = make([]*itemTask, len(env.Items))
	for i := range env.Items {
		t.items[i] = &itemTask{t: t, item: &env.Items[i]}
	}
	return t
}

// validEnvelopeID accepts the ids envelopes get from ingress and workers:
// printable, without white space, at most 512 bytes.
func validEnvelopeID(id string) bool {
	return len(id) <= 512 && strings.IndexFunc(id, func(r rune) bool { return r <= ' ' || r == 0x7f }) < 0
}

func (t *task) delivered() uint64 {
	if t.meta == nil {
		return 1
	}
	return t.meta.NumDelivered
}

// size is the number of items the task counts for in a batch (an
// undecodable message counts as one).
func (t *task) size() int { return max(len(t.items), 1) }

// deadline returns the earliest deadline of the task's items, zero if none
// has one or the message is not decoded.
func (t *task) deadline() time.Time {
	var d time.Time
	for _, it := range t.items {
		if it.item.DeadlineUnixNano > 0 {
			d = earliest(d, time.Unix(0, it.item.DeadlineUnixNano))
		}
	}
	return d
}

// invalid checks what the worker relies on: the item belongs to this
// pipeline, has an id, routes its result only to legitimate places, and its
// input fits the models.
func (w *worker) invalid(it *wire.Item) error {
	switch {
	case it.ID == "":
		return errors.New("item has no id")
	case it.Pipeline != w.cfg.Pipeline:
		return fmt.Errorf("item of pipeline %q sent to pipeline %q", it.Pipeline, w.cfg.Pipeline)
	case it.Client != "" && !wire.ValidToken(it.Client):
		return fmt.Errorf("client %q is not a valid subject token", truncate(it.Client))
	case it.ReplyTo != "" && w.replyRefused(it.ReplyTo) != nil:
		return w.replyRefused(it.ReplyTo)
	case it.Input.Datatype != wire.FP32 && !(it.Input.Datatype == wire.UINT8 && w.uint8Scale > 0):
		return fmt.Errorf("input datatype %q", it.Input.Datatype)
	case it.Input.Elements() != int64(w.itemSize) || len(it.Input.Data) != w.itemSize*wire.DatatypeSize(it.Input.Datatype):
		return fmt.Errorf("input shape %v (%d bytes), want %d %s values", it.Input.Shape, len(it.Input.Data), w.itemSize, it.Input.Datatype)
	}
	return nil
}

// nonFinite answers an item whose model output is NaN or infinite with
// invalid_input: a permanent error of that item only.
func (w *worker) nonFinite(c *control, h *hosted, it *itemTask, now time.Time) {
	w.metrics.nonFinite.WithLabelValues(h.name).Inc()
	w.logger.Warn("model output is not finite: answering invalid_input", "id", it.item.ID, "model", h.name)
	it.outcome = outcomeFailed
	w.addResult(it, w.errorResult(c, it.item, now, wire.Errorf(wire.CodeInvalidInput,
		"model %q produced a non-finite output for this input (values too large in magnitude?)", h.name)))
}

// finite reports whether every value is a number, not NaN or ±Inf.
func finite(v []float32) bool {
	for _, x := range v {
		if x-x != 0 { // NaN or ±Inf
			return false
		}
	}
	return true
}

// outputs adds a task's envelopes: one escalation envelope per next model
// (ID wire.EscalationID of the input envelope, so a redelivered input
// republishes the same envelope and the next stream deduplicates it), and
// for each item its model failed on, either an envelope of that item back
// to this model's queue or, on its last try, a dead letter and an internal
// error result.
func (w *worker) outputs(h *hosted, c *control, t *task) {
	if t.decodeErr != nil {
		return
	}
	var order []string
	groups := map[string][]*itemTask{}
	for _, it := range t.items {
		switch {
		case it.next != "":
			if _, ok := groups[it.next]; !ok {
				order = append(order, it.next)
			}
			groups[it.next] = append(groups[it.next], it)
		case it.retry != nil:
			w.retryItem(h, c, it)
		}
	}
	for _, next := range order {
		items := groups[next]
		env := &wire.Envelope{ID: wire.EscalationID(t.id, next), Items: make([]wire.Item, len(items))}
		for k, it := range items {
			env.Items[k] = *it.item
		}
		m, err := w.envelopeMsg(c, next, env)
		if err != nil {
			t.fail(fmt.Errorf("encode escalation to %q: %w", next, err))
			continue
		}
		t.escalations = append(t.escalations, escalation{index: len(t.js), next: next, items: items})
		t.js = append(t.js, m)
	}
}

// retryItem sends an item its model failed on back to the model's queue
// (Attempts + 1), or dead-letters it with an internal error result when it
// has had the queue's MaxDeliver tries.
func (w *worker) retryItem(h *hosted, c *control, it *itemTask) {
	t := it.t
	attempt := it.item.Attempts + 1
	w.metrics.itemRetries.WithLabelValues(h.name).Inc()
	if h.maxDeliver > 0 && attempt >= h.maxDeliver {
		w.logger.Error("item failed on its last try: dead-lettered with an internal error result",
			"model", h.name, "id", it.item.ID, "tries", attempt, "err", it.retry)
		it.outcome = outcomeFailed
		w.metrics.deadLetters.WithLabelValues(h.name).Inc()
		env := &wire.Envelope{ID: wire.RetryID(t.id, it.item.DedupKey(), attempt), Items: []wire.Item{*it.item}}
		body, err := w.codec.EncodeEnvelope(env)
		if err != nil {
			t.fail(fmt.Errorf("encode dead letter of %q: %w", it.item.ID, err))
			return
		}
		dl := nats.NewMsg(wire.DLQSubject(w.cfg.Pipeline, h.name))
		dl.Data = body
		dl.Header.Set(wire.HeaderMsgID, env.ID+".dlq")
		dl.Header.Set(wire.HeaderError, it.retry.Error())
		t.js = append(t.js, dl)
		w.addResult(it, w.errorResult(c, it.item, w.now(), wire.Errorf(wire.CodeInternal,
			"model %q failed on this item %d times: %v", h.name, attempt, it.retry)))
		return
	}
	it.outcome = outcomeRetried
	again := *it.item
	again.Attempts = attempt
	env := &wire.Envelope{ID: wire.RetryID(t.id, it.item.DedupKey(), attempt), Items: []wire.Item{again}}
	m, err := w.envelopeMsg(c, h.name, env)
	if err != nil {
		t.fail(fmt.Errorf("encode retry of %q: %w", it.item.ID, err))
		return
	}
	t.js = append(t.js, m)
}

// envelopeMsg is the message of an envelope to model's queue. Its partition
// is a hash of the envelope's ID: a republished envelope goes to the same
// stream, whose deduplication then drops it.
func (w *worker) envelopeMsg(c *control, model string, env *wire.Envelope) (*nats.Msg, error) {
	body, err := w.codec.EncodeEnvelope(env)
	if err != nil {
		return nil, err
	}
	parts := c.Plan.QueuePartitions()
	hash := fnv.New32a()
	_, _ = hash.Write([]byte(env.ID))
	part := int(hash.Sum32() % uint32(parts))
	m := nats.NewMsg(wire.ModelPartitionSubject(w.cfg.Pipeline, model, part, parts))
	m.Data = body
	m.Header.Set(wire.HeaderMsgID, env.ID)
	return m, nil
}

// answerRejected answers, degraded, the items of every escalation of t
// that the next queue rejected as full, and reports whether it queued new
// publishes (only those: what was published stays published).
func (w *worker) answerRejected(h *hosted, t *task) bool {
	if t.err != nil {
		return false // redelivered anyway
	}
	t.js, t.core, t.grouped = nil, nil, nil
	queued := false
	for _, e := range t.escalations {
		if !e.rejected {
			continue
		}
		w.logger.Debug("next stage's queue is full: answering degraded", "model", h.name, "next", e.next, "items", len(e.items))
		for _, it := range e.items {
			it.next = ""
			it.answer(degradedQueueFull)
			queued = true
		}
	}
	t.escalations = nil
	return queued
}

// answerResult is the result of an item answered by its last visit.
func (w *worker) answerResult(c *control, it *wire.Item, now time.Time, probs []float32) *wire.Result {
	v := it.Visits[len(it.Visits)-1]
	res := w.baseResult(c, it, now)
	res.Label, res.Confidence, res.AnsweredBy = v.Label, v.Confidence, v.Model
	res.Probabilities = probs
	return res
}

// errorResult is an error result for the item.
func (w *worker) errorResult(c *control, it *wire.Item, now time.Time, e *wire.Error) *wire.Result {
	res := w.baseResult(c, it, now)
	res.Error = e
	return res
}

func (w *worker) baseResult(c *control, it *wire.Item, now time.Time) *wire.Result {
	res := &wire.Result{
		ID: it.ID, Pipeline: w.cfg.Pipeline, Client: it.Client,
		Gear: c.Gear.ID, AdmittedGear: it.AdmittedGear,
		Visits:           slices.Clone(it.Visits),
		AdmittedUnixNano: it.AdmittedUnixNano, CompletedUnixNano: now.UnixNano(),
	}
	if it.AdmittedUnixNano > 0 {
		res.TotalNs = now.UnixNano() - it.AdmittedUnixNano
	}
	return res
}

// addResult queues the result's publishes on the item's task: to the
// results stream for a durable item (deduplicated by wire.ResultMsgID of
// its key), and to the reply inbox. Both carry the result in the item's
// ResultFormat (msgpack, or the OIP JSON body for jobs sent as JSON) with
// its Content-Type header, and an error result the header Cascade-Error.
// A result that cannot be encoded becomes an internal error result.
func (w *worker) addResult(it *itemTask, res *wire.Result) {
	w.metrics.result(res)
	if it.item.Door != "" && it.item.AdmittedUnixNano > 0 {
		w.metrics.e2e.WithLabelValues(it.item.Door).Observe(float64(res.CompletedUnixNano-it.item.AdmittedUnixNano) / 1e9)
	}
	item, t := it.item, it.t
	data, contentType, err := w.codec.EncodeResultAs(res, item.ResultFormat)
	if err != nil {
		w.logger.Error("encode result", "id", res.ID, "err", err)
		res = &wire.Result{ID: res.ID, Pipeline: res.Pipeline, Client: res.Client, Error: wire.Errorf(wire.CodeInternal, "encode result: %v", err)}
		if data, contentType, err = w.codec.EncodeResultAs(res, item.ResultFormat); err != nil {
			t.fail(fmt.Errorf("encode result of %q: %w", res.ID, err))
			return
		}
	}
	fill := func(m *nats.Msg) {
		m.Data = data
		m.Header.Set(wire.HeaderContentType, contentType)
		if res.Error != nil {
			m.Header.Set(wire.HeaderError, string(res.Error.Code))
		}
	}
	client := item.Client
	if client == "" {
		client = wire.DefaultClient
	}
	if item.Durable && wire.ValidToken(client) {
		m := nats.NewMsg(wire.ResultSubject(w.cfg.Pipeline, client))
		fill(m)
		m.Header.Set(wire.HeaderMsgID, wire.ResultMsgID(w.cfg.Pipeline, item.DedupKey()))
		t.js = append(t.js, m)
	}
	if item.ReplyTo != "" {
		// Never publish where a reply cannot legitimately go: only the
		// ingress's check stands between a producer and a forged reply
		// subject, and items can reach a queue by other ways.
		if err := w.replyRefused(item.ReplyTo); err != nil {
			w.metrics.refusedReplies.WithLabelValues(t.model).Inc()
			w.logger.Warn("not answering on a refused reply subject", "id", item.ID, "err", err)
			return
		}
		if item.ReplyBatched {
			r := *res
			r.Index = item.BatchIndex
			if t.grouped == nil {
				t.grouped = map[string][]wire.Result{}
			}
			t.grouped[item.ReplyTo] = append(t.grouped[item.ReplyTo], r)
			return
		}
		m := nats.NewMsg(item.ReplyTo)
		fill(m)
		t.core = append(t.core, m)
	}
}

// groupedReplies turns a task's grouped results into one message per reply
// subject: a msgpack Result whose Items are the results (each with its
// Index), Content-Type msgpack.
func (w *worker) groupedReplies(t *task) {
	for subject, results := range t.grouped {
		b, err := w.codec.EncodeResult(&wire.Result{Pipeline: w.cfg.Pipeline, Items: results})
		if err != nil {
			t.fail(fmt.Errorf("encode grouped results for %s: %w", subject, err))
			continue
		}
		m := nats.NewMsg(subject)
		m.Data = b
		m.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
		m.Header.Set(wire.HeaderResultBatch, strconv.Itoa(len(results)))
		t.core = append(t.core, m)
	}
	t.grouped = nil
}

// replyRefused says why the worker must not answer on subject, or nil.
func (w *worker) replyRefused(subject string) error {
	return wire.CheckReplySubject(w.cfg.InboxPrefixes, subject)
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// deadLetterMsg is the dead-letter copy of a task's input message.
func (w *worker) deadLetterMsg(h *hosted, t *task, reason string) *nats.Msg {
	m := nats.NewMsg(wire.DLQSubject(w.cfg.Pipeline, h.name))
	m.Data = t.msg.Data()
	id := t.id
	if id == "" {
		id = "seq-" + strconv.FormatUint(t.streamSeq(), 10)
	}
	m.Header.Set(wire.HeaderMsgID, id+".dlq."+h.name)
	m.Header.Set(wire.HeaderError, reason)
	return m
}

func (t *task) streamSeq() uint64 {
	if t.meta == nil {
		return 0
	}
	return t.meta.Sequence.Stream
}

// errPublishTimeout: a PubAck did not arrive within PublishTimeout.
var errPublishTimeout = errors.New("publish acknowledgement timed out")

// publish sends every task's JetStream messages asynchronously, waits for
// all their PubAcks, then sends the core messages of the tasks whose
// JetStream messages all succeeded. A task's first failure becomes its
// error (kept if it already has one), except that a full next queue only
// marks the escalation it rejected (answerRejected handles it).
func (w *worker) publish(tasks []*task) {
	type pending struct {
		t   *task
		idx int
		f   jetstream.PubAckFuture
	}
	var futures []pending
	for _, t := range tasks {
		for idx, m := range t.js {
			f, err := w.js.PublishMsgAsync(m)
			if err != nil {
				t.failed(idx, fmt.Errorf("publish to %s: %w", m.Subject, err))
				continue
			}
			futures = append(futures, pending{t, idx, f})
		}
	}
	timer := time.NewTimer(w.cfg.PublishTimeout)
	defer timer.Stop()
	expired := false
	for _, p := range futures {
		subject := p.f.Msg().Subject
		if expired {
			select {
			case <-p.f.Ok():
			case err := <-p.f.Err():
				p.t.failed(p.idx, fmt.Errorf("publish to %s: %w", subject, err))
			default:
				p.t.failed(p.idx, fmt.Errorf("publish to %s: %w", subject, errPublishTimeout))
			}
			continue
		}
		select {
		case <-p.f.Ok():
		case err := <-p.f.Err():
			p.t.failed(p.idx, fmt.Errorf("publish to %s: %w", subject, err))
		case <-timer.C:
			expired = true
			p.t.failed(p.idx, fmt.Errorf("publish to %s: %w", subject, errPublishTimeout))
		}
	}
	for _, t := range tasks {
		if t.err != nil && !errors.Is(t.err, natsbus.ErrPermanent) {
			continue
		}
		w.groupedReplies(t)
		for _, m := range t.core {
			if err := w.nc.PublishMsg(m); err != nil {
				t.fail(fmt.Errorf("reply to %s: %w", m.Subject, err))
			}
		}
	}
}

// failed records the failure of the task's js message idx: an escalation
// rejected by a full queue is marked for a degraded answer, anything else
// fails the task.
func (t *task) failed(idx int, err error) {
	if natsbus.QueueFull(err) {
		for k := range t.escalations {
			if t.escalations[k].index == idx {
				t.escalations[k].rejected = true
				return
			}
		}
	}
	t.fail(err)
}

// fail records a transient failure; it takes precedence over a permanent
// verdict, so a dead letter that could not be published is retried. A full
// queue keeps precedence over other failures only while it is the first.
func (t *task) fail(err error) {
	if t.err == nil || errors.Is(t.err, natsbus.ErrPermanent) {
		t.err = err
	}
}
