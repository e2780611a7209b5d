package natsbus_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/nats-io/nats-server/v2/server"
)

// TestDeployConfigsParse checks that every nats-server config under
// deploy/nats is accepted by the server version we pin, and that none
// serves monitoring (which has no authentication) beyond loopback.
func TestDeployConfigsParse(t *testing.T) {
	natstest.SetDeployPasswords(t)
	files, err := filepath.Glob("../../deploy/nats/*.conf")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("found %d configs under deploy/nats, want single, dev, accounts and 3 cluster nodes", len(files))
	}
	for _, f := range files {
		if filepath.Base(f) == "accounts.conf" {
			continue // included by the others
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			opts, err := server.ProcessConfigFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if !opts.JetStream {
				t.Error("JetStream is not enabled")
			}
			if opts.MaxPayload < 8<<20 {
				t.Errorf("max_payload = %d, want >= 8MB", opts.MaxPayload)
			}
			if opts.HTTPPort != 0 && opts.HTTPHost != "127.0.0.1" {
				t.Errorf("monitoring listens on %s:%d, want loopback only", opts.HTTPHost, opts.HTTPPort)
			}
			if opts.Cluster.Port != 0 && opts.Cluster.Host != "127.0.0.1" && opts.Cluster.Username == "" {
				t.Errorf("cluster port %s:%d is open without route authorization", opts.Cluster.Host, opts.Cluster.Port)
			}
		})
	}
}

// TestDeployConfigRequiresPasswords checks that accounts.conf has no
// default passwords: without the variables the server refuses the config.
func TestDeployConfigRequiresPasswords(t *testing.T) {
	natstest.SetDeployPasswords(t)
	for user := range natstest.DeployPasswords {
		v := natstest.PasswordVar(user)
		t.Run(v, func(t *testing.T) {
			t.Setenv(v, "") // restored after the test
			if err := os.Unsetenv(v); err != nil {
				t.Fatal(err)
			}
			if _, err := server.ProcessConfigFile("../../deploy/nats/single.conf"); err == nil {
				t.Errorf("single.conf parses without %s", v)
			}
		})
	}
}
