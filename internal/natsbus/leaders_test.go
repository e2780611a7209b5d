package natsbus_test

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// TestEnsureTopologySpreadsPartitionLeaders: on a 3-node cluster the three
// partition streams of a model get three different leaders, partition k
// on the k-th node, and a second run moves a leader only back to its
// partition's node (on a loaded machine a raft election may have moved one
// in between; the placement itself must not change).
func TestEnsureTopologySpreadsPartitionLeaders(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	c := natstest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := natstest.TinyPlan(t)
	p.Partitions = 3
	logs := &syncBuffer{}
	topo := natsbus.TopologyConfig{
		Replicas: 3,
		Storage:  jetstream.MemoryStorage,
		Logger:   slog.New(slog.NewTextHandler(logs, nil)),
	}
	if _, err := natsbus.EnsureTopology(ctx, c.JS, p, topo); err != nil {
		t.Fatal(err)
	}
	for _, m := range p.UsedModels() {
		waitLeaders(ctx, t, c.JS, p.Pipeline, m, c.Names)
	}

	before := logs.String()
	t.Logf("first EnsureTopology:\n%s", before)
	if _, err := natsbus.EnsureTopology(ctx, c.JS, p, topo); err != nil {
		t.Fatal(err)
	}
	wantLeader := map[string]string{}
	for _, m := range p.UsedModels() {
		for k, name := range c.Names {
			wantLeader[wire.ModelPartitionStream(p.Pipeline, m, k, len(c.Names))] = name
		}
	}
	for _, line := range strings.Split(before, "\n") {
		if stream := logField(line, "stream"); strings.Contains(line, "moved stream leader") && wantLeader[stream] == "" {
			t.Fatalf("the first run moved %q, not a partition stream this test knows: %s", stream, line)
		}
	}
	for _, line := range strings.Split(strings.TrimPrefix(logs.String(), before), "\n") {
		if !strings.Contains(line, "moved stream leader") {
			continue
		}
		stream, to := logField(line, "stream"), logField(line, "to")
		if want, ok := wantLeader[stream]; !ok || to != want {
			t.Errorf("second EnsureTopology moved %s's leader to %q, want only moves back to its partition's node %q:\n%s", stream, to, want, line)
		}
	}
	for _, m := range p.UsedModels() {
		waitLeaders(ctx, t, c.JS, p.Pipeline, m, c.Names)
	}
}

// waitLeaders polls until partition k of model m is led by want[k].
func waitLeaders(ctx context.Context, t *testing.T, js jetstream.JetStream, pipeline, m string, want []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var got []string
	for {
		got = got[:0]
		for k := range want {
			leader := ""
			if s, err := js.Stream(ctx, wire.ModelPartitionStream(pipeline, m, k, len(want))); err == nil && s.CachedInfo().Cluster != nil {
				leader = s.CachedInfo().Cluster.Leader
			}
			got = append(got, leader)
		}
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("leaders of model %q's partitions = %q, want %q", m, got, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logField is the value of key in a line of slog's text handler.
func logField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
