package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/natsembed"

	"github.com/nats-io/nats.go"
)

func TestRedactURLHidesPasswords(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://worker:s3cret@nats:4222", "nats://worker:xxxxx@nats:4222"},
		{"nats://a:p1@h1:4222,nats://b:p2@h2:4222", "nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222"},
		{"nats://s3cret-token@h:4222", "nats://xxxxx@h:4222"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestConnectErrorDoesNotLeakThePassword(t *testing.T) {
	// Nothing listens on port 1 of loopback: the dial fails at once.
	_, err := Connect("nats://worker:s3cret@127.0.0.1:1", "test", slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q shows the password", err)
	}
}

// TestConnectWaitRetriesUntilTheServerStarts starts the connect before any
// server listens on the port, then starts the server there: the connect
// logs its failed attempts at warn and returns a live connection.
func TestConnectWaitRetriesUntilTheServerStarts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()

	var warns atomic.Int64
	logger := slog.New(countingHandler{level: slog.LevelWarn, n: &warns})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		nc  *nats.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		nc, err := ConnectWait(ctx, fmt.Sprintf("nats://worker:s3cret@127.0.0.1:%d", port), "test", logger)
		done <- result{nc, err}
	}()
	for warns.Load() < 2 {
		select {
		case r := <-done:
			t.Fatalf("ConnectWait returned before a server existed: %v", r.err)
		case <-ctx.Done():
			t.Fatal("no failed attempt logged")
		case <-time.After(10 * time.Millisecond):
		}
	}
	srv, err := natsembed.StartServer(natsembed.ServerConfig{Port: port, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		defer r.nc.Close()
		if !r.nc.IsConnected() {
			t.Fatalf("connection status %v", r.nc.Status())
		}
	case <-ctx.Done():
		t.Fatal("not connected 30s after the server started")
	}
}

func TestConnectWaitStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := ConnectWait(ctx, "nats://127.0.0.1:1", "test", slog.New(slog.DiscardHandler))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
}

// countingHandler counts records at or above level.
type countingHandler struct {
	level slog.Level
	n     *atomic.Int64
}

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }
func (h countingHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }
