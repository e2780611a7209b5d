package natsbus

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
		NoLog:      !c.Debug,
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
	if c.Debug {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("start nats-server: not ready after 10s (port %d in use?)", c.Port)
	}
	return s, nil
}
