package natsbus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func TestEnsureTopologyIsIdempotent(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p := natstest.TinyPlan(t)

	err := natsbus.CheckTopology(ctx, srv.JS, p.Pipeline, p.UsedModels(), p.QueuePartitions())
	if !errors.Is(err, natsbus.ErrNotReady) {
		t.Fatalf("CheckTopology before ensure = %v, want ErrNotReady", err)
	}
	for range 2 {
		if _, err := natsbus.EnsureTopology(ctx, srv.JS, p, natsbus.TopologyConfig{MaxQueue: 10}); err != nil {
			t.Fatal(err)
		}
	}
	if err := natsbus.CheckTopology(ctx, srv.JS, p.Pipeline, p.UsedModels(), p.QueuePartitions()); err != nil {
		t.Fatal(err)
	}
	s, err := srv.JS.Stream(ctx, wire.ModelStream("tiny", "big"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Retention != jetstream.WorkQueuePolicy || info.Config.Discard != jetstream.DiscardNew || info.Config.MaxMsgs != 10 {
		t.Fatalf("model stream config = %+v", info.Config)
	}
	// A full queue rejects publishes instead of dropping old work.
	for i := range 10 {
		if _, err := srv.JS.Publish(ctx, wire.ModelSubject("tiny", "big"), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := srv.JS.Publish(ctx, wire.ModelSubject("tiny", "big"), []byte("overflow")); err == nil {
		t.Fatal("publish to a full queue succeeded, want an error")
	}
}

// TestTopologyBoundsEveryStream: no stream of the topology grows without a
// bound: jobs (messages and bytes, refusing new jobs), dead letters and
// results (bytes, and messages for dead letters, dropping the oldest).
func TestTopologyBoundsEveryStream(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	p := natstest.TinyPlan(t)
	if _, err := natsbus.EnsureTopology(ctx, srv.JS, p, natsbus.TopologyConfig{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		stream  string
		discard jetstream.DiscardPolicy
		msgs    bool
	}{
		{wire.JobsStream(p.Pipeline), jetstream.DiscardNew, true},
		{wire.DLQStream(p.Pipeline), jetstream.DiscardOld, true},
		{wire.ResultsStream, jetstream.DiscardOld, false},
	} {
		s, err := srv.JS.Stream(ctx, c.stream)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		if cfg.MaxBytes <= 0 || (c.msgs && cfg.MaxMsgs <= 0) || cfg.Discard != c.discard {
			t.Errorf("%s: max bytes %d, max msgs %d, discard %v; want bounded, discard %v", c.stream, cfg.MaxBytes, cfg.MaxMsgs, cfg.Discard, c.discard)
		}
	}
}

// TestDeduplicationWindows: the models' work queues keep message ids for
// MaxDeliver × AckWait by default, long enough for every redelivery of a
// batch and no longer (nats-server holds each id in memory); jobs, results
// and dead letters keep them for the producers' window; the consumers
// redeliver after AckWait. Set windows are taken as they are.
func TestDeduplicationWindows(t *testing.T) {
	for _, c := range []struct {
		name               string
		cfg                natsbus.TopologyConfig
		queue, other, wait time.Duration
	}{
		{"defaults", natsbus.TopologyConfig{}, 10 * time.Second, 2 * time.Minute, 2 * time.Second},
		{"derived from ack wait", natsbus.TopologyConfig{AckWait: 3 * time.Second, MaxDeliver: 3}, 9 * time.Second, 2 * time.Minute, 3 * time.Second},
		{"set", natsbus.TopologyConfig{QueueDuplicates: 45 * time.Second, Duplicates: 5 * time.Minute}, 45 * time.Second, 5 * time.Minute, 2 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := natstest.Start(t)
			ctx := context.Background()
			p := natstest.TinyPlan(t)
			if _, err := natsbus.EnsureTopology(ctx, srv.JS, p, c.cfg); err != nil {
				t.Fatal(err)
			}
			windows := map[string]time.Duration{wire.JobsStream(p.Pipeline): c.other, wire.ResultsStream: c.other, wire.DLQStream(p.Pipeline): c.other}
			for _, m := range p.Models {
				windows[wire.ModelStream(p.Pipeline, m.Name)] = c.queue
			}
			for stream, want := range windows {
				s, err := srv.JS.Stream(ctx, stream)
				if err != nil {
					t.Fatal(err)
				}
				if got := s.CachedInfo().Config.Duplicates; got != want {
					t.Errorf("%s: deduplication window %v, want %v", stream, got, want)
				}
			}
			cons, err := srv.JS.Consumer(ctx, wire.ModelStream(p.Pipeline, p.Models[0].Name), wire.ModelConsumer(p.Models[0].Name))
			if err != nil {
				t.Fatal(err)
			}
			if got := cons.CachedInfo().Config.AckWait; got != c.wait {
				t.Errorf("ack wait %v, want %v", got, c.wait)
			}
		})
	}
}

// TestIdempotencyBucket: the topology has the idempotency bucket, its TTL
// the configured window (2 minutes by default), bounded in bytes.
func TestIdempotencyBucket(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	p := natstest.TinyPlan(t)
	for _, c := range []struct {
		window, want time.Duration
	}{{0, 2 * time.Minute}, {30 * time.Second, 30 * time.Second}} {
		if _, err := natsbus.EnsureTopology(ctx, srv.JS, p, natsbus.TopologyConfig{IdempotencyWindow: c.window}); err != nil {
			t.Fatal(err)
		}
		kv, err := srv.JS.KeyValue(ctx, wire.IdempotencyBucket(p.Pipeline))
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		info := st.(*jetstream.KeyValueBucketStatus).StreamInfo()
		if st.TTL() != c.want || info.Config.MaxBytes <= 0 || st.History() != 1 {
			t.Errorf("window %v: TTL %v, max bytes %d, history %d; want TTL %v, bounded, history 1", c.window, st.TTL(), info.Config.MaxBytes, st.History(), c.want)
		}
	}
}
