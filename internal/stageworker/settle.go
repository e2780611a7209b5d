package stageworker

import (
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// ackLabels are the values of the acks metric's action label, by the
// acknowledgement natsbus.DecideAck decides: a message's last try is
// dead-lettered and terminated, a rejected one terminated.
var ackLabels = [...]string{
	natsbus.AckDone:    "ack",
	natsbus.AckRetry:   "nak",
	natsbus.AckLastTry: "dead_letter",
	natsbus.AckReject:  "term",
}

// settle acknowledges one message as natsbus.DecideAck decides, and
// records its items' outcomes.
func (w *worker) settle(h *hosted, c *control, t *task) {
	act := natsbus.DecideAck(t.err, t.delivered(), h.maxDeliver)
	var err error
	switch act {
	case natsbus.AckDone:
		err = t.msg.Ack()
		for _, it := range t.items {
			w.metrics.items.WithLabelValues(h.name, it.outcome).Inc()
			if it.degrade != "" {
				w.metrics.degraded.WithLabelValues(h.name, it.degrade).Inc()
			}
		}
	case natsbus.AckReject:
		w.logger.Warn("terminating message", "model", h.name, "envelope", t.id, "err", t.err)
		err = t.msg.Term()
		w.metrics.items.WithLabelValues(h.name, outcomeFailed).Inc()
		if t.decodeErr != nil {
			w.metrics.deadLetters.WithLabelValues(h.name).Inc()
		}
	case natsbus.AckRetry:
		w.logger.Warn("transient failure; redelivering later", "model", h.name, "envelope", t.id,
			"items", len(t.items), "delivery", t.delivered(), "err", t.err)
		err = t.msg.NakWithDelay(w.cfg.NakDelay)
	case natsbus.AckLastTry:
		cause := t.err
		if dlErr := w.deadLetter(h, c, t); dlErr != nil {
			// Past MaxDeliver the server will not redeliver; the message
			// stays in the stream for an operator.
			w.logger.Error("could not dead-letter a message on its last delivery; it stays in the queue",
				"model", h.name, "envelope", t.id, "err", dlErr, "cause", cause)
			return
		}
		w.logger.Error("message failed on its last delivery: dead-lettered with an internal error result for each item",
			"model", h.name, "envelope", t.id, "items", len(t.items), "delivery", t.delivered(), "err", cause)
		err = t.msg.Term()
		w.metrics.items.WithLabelValues(h.name, outcomeFailed).Add(float64(len(t.items)))
		w.metrics.deadLetters.WithLabelValues(h.name).Inc()
		act = natsbus.AckReject // counted as terminated
	}
	w.metrics.acks.WithLabelValues(h.name, ackLabels[act]).Inc()
	if err != nil {
		w.logger.Warn("acknowledgement failed", "model", h.name, "envelope", t.id, "action", ackLabels[act], "err", err)
	}
}

// deadLetter publishes the message to the dead-letter subject and an
// `internal` error result for each of its items, and waits for them. An
// item whose real result was published on an earlier delivery keeps it:
// the error result has the same message id and is deduplicated (a reply
// caller takes the first answer).
func (w *worker) deadLetter(h *hosted, c *control, t *task) error {
	cause := t.err
	t.js, t.core, t.err, t.escalations, t.grouped = nil, nil, nil, nil, nil
	t.js = append(t.js, w.deadLetterMsg(h, t, cause.Error()))
	for _, it := range t.items {
		w.addResult(it, w.errorResult(c, it.item, w.now(), wire.Errorf(wire.CodeInternal,
			"publishing the outputs of model %q failed on delivery %d of %d: %v", h.name, t.delivered(), h.maxDeliver, cause)))
	}
	w.publish([]*task{t})
	return t.err
}
