package natsbus

import (
	"errors"
	"fmt"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// ErrPermanent marks a handler error that no redelivery can fix (an
// undecodable message, an invalid item): see DecideAck.
var ErrPermanent = errors.New("permanent failure")

// Permanent returns an error that wraps ErrPermanent.
func Permanent(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrPermanent, fmt.Sprintf(format, args...))
}

// AckAction is how a consumer settles one delivered JetStream message.
type AckAction uint8

const (
	// AckDone: the message was handled; Ack it.
	AckDone AckAction = iota
	// AckRetry: a transient failure; NakWithDelay, for a later delivery.
	AckRetry
	// AckLastTry: a transient failure on the last delivery the consumer
	// allows: the server will not redeliver it, so the handler answers it
	// for good (an error result, a dead letter) and then settles it.
	AckLastTry
	// AckReject: a permanent failure; no delivery can fix it.
	AckReject
)

func (a AckAction) String() string {
	switch a {
	case AckDone:
		return "done"
	case AckRetry:
		return "retry"
	case AckLastTry:
		return "last_try"
	case AckReject:
		return "reject"
	}
	return "unknown"
}

// DecideAck is the one acknowledgement decision of the services'
// JetStream consumers (the stage workers' queues, the ingress's jobs): it
// maps the error a handler returned for a message, the message's delivery
// count and the consumer's MaxDeliver (<= 0: unlimited) to an AckAction.
//
// An error is permanent when it wraps ErrPermanent or is a wire error
// whose code no retry can change (invalid_input, deadline_exceeded,
// duplicate); any other error, overloaded, unavailable and internal
// included, is transient.
func DecideAck(err error, delivered uint64, maxDeliver int) AckAction {
	switch {
	case err == nil:
		return AckDone
	case permanent(err):
		return AckReject
	case maxDeliver > 0 && delivered >= uint64(maxDeliver):
		return AckLastTry
	default:
		return AckRetry
	}
}

// permanent reports whether err is a permanent failure (see DecideAck).
func permanent(err error) bool {
	if errors.Is(err, ErrPermanent) {
		return true
	}
	var we *wire.Error
	if !errors.As(err, &we) {
		return false
	}
	switch we.Code {
	case wire.CodeOverloaded, wire.CodeUnavailable, wire.CodeInternal:
		return false
	}
	return true
}
