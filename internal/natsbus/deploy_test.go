package natsbus_test

import (
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestDeployConfigsParse checks that every nats-server config under
// deploy/nats is accepted by the server version we pin.
func TestDeployConfigsParse(t *testing.T) {
	for _, v := range []string{"CONTROLLER", "INGRESS", "WORKER", "PRODUCER", "SYS"} {
		t.Setenv("CASCADE_"+v+"_PASSWORD", "test-"+v)
	}
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
		})
	}
}
