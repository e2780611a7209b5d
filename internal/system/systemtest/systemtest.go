// Package systemtest starts the all-in-one system for the tests of other
// packages.
package systemtest

import (
	"context"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/system"
)

// Start starts a system with cfg (ReadyTimeout 90 s unless set), stopped
// when the test ends. The caller checks for the ONNX Runtime library
// first (orttest.Library) where cfg runs a stage worker.
func Start(tb testing.TB, cfg system.Config) *system.System {
	tb.Helper()
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sys, err := system.Start(ctx, cfg)
	if err != nil {
		tb.Fatalf("start the system: %v", err)
	}
	tb.Cleanup(func() {
		if err := sys.Stop(); err != nil {
			tb.Errorf("stop: %v", err)
		}
	})
	return sys
}
