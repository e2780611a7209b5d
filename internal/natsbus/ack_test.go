package natsbus

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func TestDecideAck(t *testing.T) {
	transient := errors.New("publish timed out")
	tests := []struct {
		name       string
		err        error
		delivered  uint64
		maxDeliver int
		want       AckAction
	}{
		{"success acks", nil, 1, 5, AckDone},
		{"success on the last delivery still acks", nil, 5, 5, AckDone},
		{"permanent rejects", Permanent("bad input"), 1, 5, AckReject},
		{"wrapped permanent rejects", fmt.Errorf("handle: %w", Permanent("x")), 1, 5, AckReject},
		{"permanent on the last delivery rejects", Permanent("x"), 5, 5, AckReject},
		{"transient retries", transient, 1, 5, AckRetry},
		{"transient before the last delivery retries", transient, 4, 5, AckRetry},
		{"transient on the last delivery is the last try", transient, 5, 5, AckLastTry},
		{"transient past the last delivery is the last try", transient, 7, 5, AckLastTry},
		{"unlimited deliveries never end", transient, 1000, -1, AckRetry},
		{"max deliver 0 means unlimited", transient, 1000, 0, AckRetry},
		{"max deliver 1: the first delivery is the last", transient, 1, 1, AckLastTry},
		// The jobs door's verdicts are wire errors.
		{"invalid input rejects", wire.Errorf(wire.CodeInvalidInput, "shape"), 1, 5, AckReject},
		{"deadline exceeded rejects", fmt.Errorf("admit: %w", wire.Errorf(wire.CodeDeadlineExceeded, "late")), 1, 5, AckReject},
		{"duplicate rejects", wire.Errorf(wire.CodeDuplicate, "key"), 1, 5, AckReject},
		{"overloaded retries", wire.Errorf(wire.CodeOverloaded, "queue full"), 1, 5, AckRetry},
		{"unavailable retries", wire.Errorf(wire.CodeUnavailable, "no topology"), 2, 5, AckRetry},
		{"internal retries", wire.Errorf(wire.CodeInternal, "boom"), 1, 0, AckRetry},
		{"overloaded on the last delivery is the last try", wire.Errorf(wire.CodeOverloaded, "queue full"), 5, 5, AckLastTry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DecideAck(tt.err, tt.delivered, tt.maxDeliver); got != tt.want {
				t.Errorf("DecideAck = %v, want %v", got, tt.want)
			}
		})
	}
}
