package ingress

import (
	"log/slog"

	"github.com/cascadeserve/cascadeserve/internal/controlstate"
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
			m.SetGear(s.Index, s.Gear.ID)
		},
	})
}

// firstModel returns the model new requests of snapshot c are published to.
func firstModel(c *controlstate.Snapshot) string { return c.Gear.Cascade[0].Model }
