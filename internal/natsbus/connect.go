package natsbus

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Connect dials NATS with options that survive a server restart: unlimited
// reconnects (the default 60 × 2 s gives up after two minutes and leaves
// consumers reporting "no heartbeat" forever), a reconnect buffer, and
// errors logged once through logger.
func Connect(servers, name string, logger *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(64 << 20),
		nats.Timeout(5 * time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			logger.Error("nats async error", "subject", subject, "err", err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
	}
	nc, err := nats.Connect(servers, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", RedactURL(servers), err)
	}
	return nc, nil
}

// ConnectWait is Connect that waits for the server: a service started
// before NATS (compose, Kubernetes) retries instead of exiting. Each failed
// attempt is logged at warn with the password redacted; the wait between
// attempts doubles from 250ms to at most 5s. It returns ctx's error when ctx
// ends first. Once connected, Connect's options reconnect for good.
//
// nats.RetryOnFailedConnect would return at once with a connection still
// dialling, and a service's first JetStream calls would fail on it; this
// returns only a connected connection.
func ConnectWait(ctx context.Context, servers, name string, logger *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	wait := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		nc, err := Connect(servers, name, logger, extra...)
		if err == nil {
			if attempt > 1 {
				logger.Info("connected to nats", "url", nc.ConnectedUrlRedacted(), "attempts", attempt)
			}
			return nc, nil
		}
		logger.Warn("nats not reachable; retrying", "attempt", attempt, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// RedactURL returns a NATS server list (one URL or several, comma-separated)
// with every password and token replaced by "xxxxx", for logs and errors.
func RedactURL(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		if _, hasPassword := u.User.Password(); !hasPassword {
			// A user without a password is a token: hide it.
			u.User = url.User("xxxxx")
			parts[i] = u.String()
			continue
		}
		parts[i] = u.Redacted()
	}
	return strings.Join(parts, ",")
}
