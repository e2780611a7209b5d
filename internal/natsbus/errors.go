package natsbus

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// jsErrStoreFailed is the JetStream error code of a failed store (the
// server's JSStreamStoreFailedF).
const jsErrStoreFailed jetstream.ErrorCode = 10077

// QueueFull reports whether err is JetStream refusing a publish because
// the stream is full: with DiscardNew at MaxMsgs or MaxBytes the server
// answers a failed store (10077) whose description is "maximum messages
// exceeded" or "maximum bytes exceeded". nats.go has no sentinel for it.
func QueueFull(err error) bool {
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		return false
	}
	return api.ErrorCode == jsErrStoreFailed && strings.Contains(api.Description, "maximum")
}

// Sleep waits d or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
