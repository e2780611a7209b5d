package natsbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// controlLog records what WatchControl applies and logs.
type controlLog struct {
	mu      sync.Mutex
	applied []string // "key=value" for plan ("plan=<pipeline>") and gear ("gear=<id>")
	logs    []string
}

func (c *controlLog) apply(key string, value []byte, _ bool) {
	v := "?"
	switch key {
	case wire.KeyPlan:
		if p, err := plan.Parse(value); err == nil {
			v = p.Pipeline
		}
	case wire.KeyGear:
		var st wire.GearState
		if err := json.Unmarshal(value, &st); err == nil {
			v = st.Gear
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied = append(c.applied, key+"="+v)
}

// saw reports whether the watch applied key=value after the first n
// applications.
func (c *controlLog) saw(n int, kv string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return n <= len(c.applied) && slices.Contains(c.applied[n:], kv)
}

func (c *controlLog) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.applied)
}

func (c *controlLog) logged(substr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.logs, func(m string) bool { return strings.Contains(m, substr) })
}

func (c *controlLog) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("applied %q, logged %q", c.applied, c.logs)
}

// handler makes c a slog handler: it records each message with its attrs.
type handler struct{ c *controlLog }

func (h handler) Enabled(context.Context, slog.Level) bool { return true }
func (h handler) Handle(_ context.Context, r slog.Record) error {
	m := r.Message
	r.Attrs(func(a slog.Attr) bool { m += " " + a.String(); return true })
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	h.c.logs = append(h.c.logs, m)
	return nil
}
func (h handler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h handler) WithGroup(string) slog.Handler      { return h }

// putControl writes the plan and the gear as the controller does.
func putControl(t *testing.T, kv jetstream.KeyValue, p *plan.Plan, gear string) {
	t.Helper()
	natstest.PutPlan(t, kv, p)
	natstest.PutGear(t, kv, p, gear)
}

// TestWatchControlFollowsRecreatedBucket: the watch waits for a bucket
// that does not exist yet, and when the bucket is deleted and created again
// (the controller re-applying a vanished topology) it binds the new bucket
// and sees its values, instead of staying on the dead one.
func TestWatchControlFollowsRecreatedBucket(t *testing.T) {
	tests := []struct {
		name string
		// every is the watch's check interval.
		every time.Duration
		// late: the bucket is created only after the watch started.
		late bool
		// waitVanished: recreate the bucket only after the watch noticed
		// it was gone; else at once, most likely within one check.
		waitVanished bool
	}{
		{name: "recreated at once", every: time.Second},
		{name: "recreated after it vanished", every: 20 * time.Millisecond, waitVanished: true},
		{name: "created after the watch started, then recreated", every: 50 * time.Millisecond, late: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := natstest.Start(t)
			p := natstest.TinyPlan(t)
			bucket := wire.KVBucket(p.Pipeline)
			ensure := func() jetstream.KeyValue { return srv.Topology(t, p, natsbus.TopologyConfig{}) }
			var kv jetstream.KeyValue
			if !tt.late {
				kv = ensure()
				putControl(t, kv, p, "accurate")
			}

			rec := &controlLog{}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			done := make(chan error, 1)
			go func() {
				done <- natsbus.WatchControl(ctx, srv.JS, bucket, tt.every, slog.New(handler{rec}), rec.apply)
			}()
			t.Cleanup(func() {
				cancel()
				natstest.Returned(t, "WatchControl after its ctx ended", 10*time.Second, done)
			})

			if tt.late {
				natstest.WaitForState(t, "the watch waiting for the bucket", 10*time.Second, func() (bool, string) { return rec.logged("waiting for the control bucket"), rec.String() })
				kv = ensure()
				putControl(t, kv, p, "accurate")
			}
			natstest.WaitForState(t, "the first gear", 10*time.Second, func() (bool, string) { return rec.saw(0, "gear=accurate"), rec.String() })

			dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer dcancel()
			if err := srv.JS.DeleteKeyValue(dctx, bucket); err != nil {
				t.Fatal(err)
			}
			if tt.waitVanished {
				natstest.WaitForState(t, "the watch to notice", 10*time.Second, func() (bool, string) { return rec.logged("vanished"), rec.String() })
			}
			n := rec.count()
			kv = ensure()
			putControl(t, kv, p, "fast")
			natstest.WaitForState(t, "the new bucket's gear", 20*time.Second, func() (bool, string) { return rec.saw(n, "gear=fast"), rec.String() })
			if !rec.saw(n, "plan=tiny") {
				t.Errorf("the new bucket's plan was not applied: %v", rec)
			}
			// The watch is on the new bucket: later writes arrive too.
			n = rec.count()
			putControl(t, kv, p, "accurate")
			natstest.WaitForState(t, "a later gear", 10*time.Second, func() (bool, string) { return rec.saw(n, "gear=accurate"), rec.String() })
			t.Logf("%v", rec)
		})
	}
}

// TestWatchControlRejectsBadBucketName: a name JetStream can never create
// is an error, not an endless wait.
func TestWatchControlRejectsBadBucketName(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := natsbus.WatchControl(ctx, srv.JS, "no.dots allowed", 10*time.Millisecond, nil, func(string, []byte, bool) {})
	if !errors.Is(err, jetstream.ErrInvalidBucketName) {
		t.Fatalf("WatchControl = %v, want ErrInvalidBucketName", err)
	}
}
