package natsbus_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
)

func TestQueueFull(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum messages exceeded"}, true},
		{fmt.Errorf("publish: %w", &jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum bytes exceeded"}), true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "disk I/O error"}, false},
		{&jetstream.APIError{Code: 503, ErrorCode: 10076, Description: "maximum"}, false},
		{errors.New("maximum messages exceeded"), false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := natsbus.QueueFull(tt.err); got != tt.want {
			t.Errorf("natsbus.QueueFull(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
