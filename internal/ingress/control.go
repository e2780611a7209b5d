package ingress

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/controlstate"
	"github.com/cascadeserve/cascadeserve/internal/wire"
)

// The ingress admits against the control snapshot (controlstate.Snapshot):
// admissions load the current one once, so a request is validated and
// routed against one consistent plan and gear. natsbus.WatchControl feeds
// the watcher; a gear the plan does not know resolves by
// controlstate.New's rule.

// newWatcher returns the follower of the pipeline's control bucket: it
// ignores plans of other pipelines and keeps the gear gauge current.
func newWatcher(pipeline string, logger *slog.Logger, m *metrics) *controlstate.Follower {
	return controlstate.NewFollower(controlstate.Options{
		Pipeline: pipeline,
		Logger:   logger,
		Applied: func(s *controlstate.Snapshot, _ string, _ bool) {
			m.gear.Set(float64(s.Index))
		},
	})
}

// firstModel returns the model new requests of snapshot c are published to.
func firstModel(c *controlstate.Snapshot) string { return c.Gear.Cascade[0].Model }

// waitBucket returns the pipeline's control bucket once the controller has
// created it, or nil when ctx ends first.
func waitBucket(ctx context.Context, js jetstream.JetStream, pipeline string, every time.Duration) jetstream.KeyValue {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		// Any error (bucket missing, NATS restarting) means "not yet".
		if kv, err := js.KeyValue(ctx, wire.KVBucket(pipeline)); err == nil {
			return kv
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
