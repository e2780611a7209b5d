package wire

import (
	"fmt"
	"strings"
)

// EnvelopeVersion is the wire version of an Envelope. Version 1 was one
// Item per message; DecodeEnvelope still reads such a message, as an
// envelope of that one item, so queues written by an older build drain.
const EnvelopeVersion = 2

// Envelope is what travels on a model's work queue: several items, one
// JetStream message. One message per item per hop made the broker's
// per-message cost (a store write, a PubAck, a fetch, an ack) the ceiling of
// the whole system; an envelope pays it once for all its items.
//
// The ingress fills an envelope with the items admitted within a short wait
// (bounded in items and bytes); a stage worker publishes the uncertain items
// of one input envelope as one envelope per next model. Every item keeps
// its own id, key, deadline, client, reply route and result format, and
// its result is published on its own.
type Envelope struct {
	V int `msgpack:"v"`
	// ID identifies the envelope; its Nats-Msg-Id is the same. A worker's
	// escalation of input envelope E to model m has the ID EscalationID(E,
	// m), so an input redelivered after a crash publishes the same
	// escalation again and the next stream deduplicates it.
	ID    string `msgpack:"id"`
	Items []Item `msgpack:"items"`
}

// EscalationID is the ID of the envelope that carries the items of input
// envelope id on to model.
func EscalationID(id, model string) string { return id + ">" + model }

// RetryID is the ID of the envelope that carries one item (key) of input
// envelope id back to its model's queue for another try. The retry of a
// retry keeps the first envelope's id: ids do not grow with tries.
func RetryID(id, key string, attempt int) string {
	base, _, _ := strings.Cut(id, "!"+key+"#")
	return fmt.Sprintf("%s!%s#%d", base, key, attempt)
}

// EncodeEnvelope encodes an envelope (setting V; the items' own V fields
// are cleared, the envelope's version covers them).
func (c *Codec) EncodeEnvelope(e *Envelope) ([]byte, error) {
	e.V = EnvelopeVersion
	for i := range e.Items {
		e.Items[i].V = 0
	}
	return c.encodeFast(func(b []byte) []byte { return appendEnvelope(b, e) }), nil
}

// DecodeEnvelope decodes a work-queue message: an Envelope, or a version 1
// single Item, returned as an envelope of that item (ID empty: the caller
// names it, e.g. after its stream sequence). Other versions are ErrVersion.
// The items' inputs share b's memory: b must not be modified while they
// are in use.
func DecodeEnvelope(b []byte, e *Envelope) error {
	r := mpReader{b: b}
	if err := r.readEnvelope(e); err != nil {
		return fmt.Errorf("decode envelope: %w", err)
	}
	switch e.V {
	case EnvelopeVersion:
		for i := range e.Items {
			e.Items[i].V = Version
		}
		return nil
	case Version:
		var it Item
		if err := DecodeItem(b, &it); err != nil {
			return err
		}
		*e = Envelope{V: EnvelopeVersion, Items: []Item{it}}
		return nil
	}
	return fmt.Errorf("decode envelope: %w: %d", ErrVersion, e.V)
}
