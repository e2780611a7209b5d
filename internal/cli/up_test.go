package cli

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
)

// TestUpReportsBusyPorts: `up` names a taken port as an error before it
// starts anything, instead of saying it is up.
func TestUpReportsBusyPorts(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	port := strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)
	free := []string{"--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--port", "-1", "--monitor-port", "0"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"http", []string{"--http", addr}, "HTTP (--http) address " + addr},
		{"metrics", []string{"--metrics", addr}, "metrics (--metrics) address " + addr},
		{"nats client", []string{"--port", port}, "NATS client (--port) address 127.0.0.1:" + port},
		{"nats monitoring", []string{"--monitor-port", port}, "NATS monitoring (--monitor-port) address 127.0.0.1:" + port},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			args := append([]string{"up", "--data", t.TempDir()}, free...)
			stdout, _, err := runWithOutputContext(ctx, append(args, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "not available") {
				t.Errorf("err = %v, want one naming %q", err, tt.want)
			}
			if strings.Contains(stdout, "is up") {
				t.Errorf("up said it was up despite the busy port:\n%s", stdout)
			}
		})
	}
}

func TestCheckListenAddrs(t *testing.T) {
	addr := natstest.FreeAddr(t)
	if err := checkListenAddrs([]listenAddr{{"a", addr}}); err != nil {
		t.Errorf("free address: %v", err)
	}
	// The same address twice is a conflict too, and both problems are named.
	err := checkListenAddrs([]listenAddr{{"a", addr}, {"b", addr}, {"c", "256.0.0.1:1"}})
	if err == nil || !strings.Contains(err.Error(), "b address") || !strings.Contains(err.Error(), "c address") || strings.Contains(err.Error(), "a address") {
		t.Errorf("err = %v, want b and c named", err)
	}
	// The check leaves nothing listening.
	if ln, err := net.Listen("tcp", addr); err != nil {
		t.Errorf("address still taken after the check: %v", err)
	} else {
		ln.Close()
	}
}
