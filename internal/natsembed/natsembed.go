// Package natsembed starts an embedded nats-server with JetStream: the server
// of the all-in-one `cascadeserve up`, of the benchmarks and of every
// integration test. The three service binaries never import it, so they do
// not link nats-server (internal/hygiene checks).
package natsembed

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ServerConfig configures an embedded nats-server.
type ServerConfig struct {
	// Host to listen on (default 127.0.0.1).
	Host string
	// Port for clients; -1 picks a free port (default 4222 when 0).
	Port int
	// HTTPPort is the monitoring port (/varz, /jsz for KEDA); 0 disables it,
	// -1 picks a free port.
	HTTPPort int
	// StoreDir is where JetStream keeps file-backed streams. Required.
	StoreDir string
	// Debug turns on the server's own logging to stderr.
	Debug bool
	// Logger, when set, receives the server's log (notices, warnings,
	// errors; not debug or trace) instead of stderr. Tests pass one that
	// writes warnings to the test log, so a failed JetStream call there
	// shows the server's reason, not only the client's generic error.
	Logger server.Logger
}

// StartServer starts an embedded nats-server with JetStream and waits until
// it accepts connections. Shut it down with Shutdown and WaitForShutdown.
func StartServer(c ServerConfig) (*server.Server, error) {
	if c.StoreDir == "" {
		return nil, fmt.Errorf("start nats-server: no store dir")
	}
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	if c.Port == 0 {
		c.Port = 4222
	}
	opts := &server.Options{
		ServerName: "cascadeserve",
		Host:       c.Host,
		Port:       c.Port,
		JetStream:  true,
		StoreDir:   c.StoreDir,
		NoLog:      !c.Debug && c.Logger == nil,
		NoSigs:     true,
		// Room for a batch of large tensors; the default is 1 MiB.
		MaxPayload: 8 << 20,
	}
	if c.HTTPPort != 0 {
		opts.HTTPHost = c.Host
		opts.HTTPPort = c.HTTPPort
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats-server: %w", err)
	}
	switch {
	case c.Logger != nil:
		s.SetLogger(c.Logger, false, false)
	case c.Debug:
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("start nats-server: not ready after 10s (port %d in use?)", c.Port)
	}
	return s, nil
}
