// Package natstest starts a real embedded nats-server with JetStream for
// tests: loopback only, a free port, its store in t.TempDir(), shut down by
// t.Cleanup; or one from a shipped config with the test users' passwords
// (StartConfigFile). It also holds what tests against it share: WaitFor,
// polling with a deadline, and TinyPlan, the plan of pipeline "tiny".
package natstest

import (
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsembed"
)

// Server is a running test server with one client connection.
type Server struct {
	Server *server.Server
	URL    string
	Conn   *nats.Conn
	JS     jetstream.JetStream
}

// Start starts the server and connects to it.
func Start(t testing.TB) *Server {
	t.Helper()
	log := &testLogger{t: t}
	s, err := natsembed.StartServer(natsembed.ServerConfig{Port: -1, StoreDir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
		log.stop()
	})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &Server{Server: s, URL: s.ClientURL(), Conn: nc, JS: js}
}

// Connect opens another client connection, closed by t.Cleanup.
func (s *Server) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// testLogger writes the server's warnings and errors to the test log (a
// JetStream API error such as "error creating store for stream" carries
// its reason only there) and drops notices, debug and trace. After the
// server has shut down it writes nothing: the testing package panics on a
// log call after the test has ended.
type testLogger struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func (l *testLogger) logf(level, format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.t.Logf("nats-server %s: %s", level, fmt.Sprintf(format, v...))
	}
}

func (l *testLogger) stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
}

func (l *testLogger) Noticef(string, ...any)         {}
func (l *testLogger) Debugf(string, ...any)          {}
func (l *testLogger) Tracef(string, ...any)          {}
func (l *testLogger) Warnf(format string, v ...any)  { l.logf("warning", format, v...) }
func (l *testLogger) Errorf(format string, v ...any) { l.logf("error", format, v...) }
func (l *testLogger) Fatalf(format string, v ...any) { l.logf("fatal", format, v...) }
