package stageworker

import (
	"errors"
	"fmt"
)

// errPermanent marks a handler error that no redelivery can fix (the
// message is undecodable, or the item is invalid): the message is
// terminated. Every other handler error is transient: the message is
// redelivered after a delay, and dead-lettered on its last allowed
// delivery.
var errPermanent = errors.New("permanent failure")

// permanent wraps err as a permanent failure.
func permanent(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errPermanent, fmt.Sprintf(format, args...))
}

// action is how one input message is acknowledged.
type action uint8

const (
	// actAck: the message was handled; its outputs are published and
	// acknowledged by JetStream.
	actAck action = iota
	// actNak: a transient failure; redeliver after the nak delay.
	actNak
	// actDeadLetter: a transient failure on the last allowed delivery;
	// publish the item to the dead-letter subject and an `internal` error
	// result, then terminate.
	actDeadLetter
	// actTerm: a permanent failure; never redeliver.
	actTerm
)

func (a action) String() string {
	switch a {
	case actAck:
		return "ack"
	case actNak:
		return "nak"
	case actDeadLetter:
		return "dead_letter"
	case actTerm:
		return "term"
	}
	return "unknown"
}

// ackAction is the one ack decision of the worker: it maps the error the
// handler returned for a message (nil, permanent or transient), the
// message's delivery count and the consumer's MaxDeliver (<= 0: unlimited)
// to an action.
func ackAction(err error, delivered uint64, maxDeliver int) action {
	switch {
	case err == nil:
		return actAck
	case errors.Is(err, errPermanent):
		return actTerm
	case maxDeliver > 0 && delivered >= uint64(maxDeliver):
		return actDeadLetter
	default:
		return actNak
	}
}
