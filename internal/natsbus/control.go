package natsbus

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/wire"
)

// WatchControl follows the control bucket's `plan` and `gear` keys until ctx
// ends, calling apply for every value. live is false for the values present
// when a watch opens (the state at start) and true for later changes. If
// the watch breaks (the bucket was recreated, NATS restarted without its
// store) it is opened again after `every`: the current values come first, so
// nothing is missed, and the caller keeps its last good state meanwhile.
// Ingress and stage workers both follow the bucket through it.
func WatchControl(ctx context.Context, kv jetstream.KeyValue, every time.Duration, logger *slog.Logger, apply func(key string, value []byte, live bool)) error {
	for {
		err := watchControlOnce(ctx, kv, apply)
		if ctx.Err() != nil {
			return nil
		}
		logger.Warn("control bucket watch broke; watching again", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// watchControlOnce runs one watch until ctx ends or the watch breaks.
func watchControlOnce(ctx context.Context, kv jetstream.KeyValue, apply func(string, []byte, bool)) error {
	kw, err := kv.WatchFiltered(ctx, []string{wire.KeyPlan, wire.KeyGear}, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("watch control bucket: %w", err)
	}
	defer func() { _ = kw.Stop() }()
	live := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-kw.Updates():
			if !ok {
				return fmt.Errorf("watch control bucket: updates closed")
			}
			if e == nil { // the end of the initial values
				live = true
				continue
			}
			apply(e.Key(), e.Value(), live)
		}
	}
}
