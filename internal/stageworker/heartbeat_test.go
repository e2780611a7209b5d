package stageworker

import (
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func TestResultStatsCountsResults(t *testing.T) {
	s := newResultStats()
	s.observe(&wire.Result{AnsweredBy: "a", Confidence: 0.5, TotalNs: 4e6})
	s.observe(&wire.Result{AnsweredBy: "a", Confidence: 0.7, TotalNs: 40e6, Degraded: true})
	s.observe(&wire.Result{AnsweredBy: "b", Confidence: 0.9, TotalNs: 9e9})
	s.observe(&wire.Result{Error: wire.Errorf(wire.CodeDeadlineExceeded, "late"), TotalNs: 2e9})
	c := s.snapshot()
	if c.Results != 4 || c.Errors != 1 || c.Degraded != 1 || c.AnsweredBy["a"] != 2 || c.AnsweredBy["b"] != 1 {
		t.Fatalf("counters %+v", c)
	}
	if d := c.ConfidenceSum["a"] - 1.2; d > 1e-9 || d < -1e-9 {
		t.Errorf("confidence sum of a = %v, want 1.2", c.ConfidenceSum["a"])
	}
	want := make([]uint64, len(wire.LatencyBucketsMs)+1)
	want[wire.LatencyBucket(4)]++
	want[wire.LatencyBucket(40)]++
	want[wire.LatencyBucket(2000)]++
	want[len(want)-1]++ // 9 s: beyond the last bound
	if !slices.Equal(c.Latency, want) || c.LatencySumMs != 4+40+9000+2000 {
		t.Errorf("latency buckets %v sum %v, want %v sum 11044", c.Latency, c.LatencySumMs, want)
	}
	// A snapshot is a copy.
	c.AnsweredBy["a"] = 100
	c.Latency[0] = 100
	if c2 := s.snapshot(); c2.AnsweredBy["a"] != 2 || c2.Latency[0] != 0 {
		t.Error("a snapshot shares the counters' maps")
	}
}

func TestInstanceNameIsAToken(t *testing.T) {
	a, b := instanceName(), instanceName()
	if !wire.ValidToken(a) || a == b {
		t.Errorf("instance names %q, %q: want distinct wire tokens", a, b)
	}
}

// TestHeartbeatAnnouncesAndLeaves runs a worker: once its models are
// loaded it announces its instance, models and runners every
// HeartbeatInterval, and on shutdown sends a last beat in state leaving.
func TestHeartbeatAnnouncesAndLeaves(t *testing.T) {
	g := gear("g1", 100, 8, 1, "linear", 0.9, "mlp")
	p := testPlan(t, []plan.Gear{g})
	e := startEnv(t, p)
	nc, err := nats.Connect(e.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var (
		mu    sync.Mutex
		beats []wire.WorkerHeartbeat
	)
	sub, err := nc.Subscribe(wire.WorkerStatsWildcard(p.Pipeline), func(m *nats.Msg) {
		var hb wire.WorkerHeartbeat
		if err := json.Unmarshal(m.Data, &hb); err != nil {
			t.Errorf("heartbeat %q: %v", m.Data, err)
			return
		}
		if m.Subject != wire.WorkerStatsSubject(p.Pipeline, hb.Instance) {
			t.Errorf("heartbeat of %q on %s", hb.Instance, m.Subject)
		}
		mu.Lock()
		beats = append(beats, hb)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(beats) }

	w := e.startWorker(t, func(c *Config) { c.Runners = 3 }, hooks{})
	natstest.WaitFor(t, "three heartbeats", 30*time.Second, func() bool { return count() >= 3 })
	w.stop(t)
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, "the leaving beat", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return beats[len(beats)-1].State == wire.WorkerLeaving
	})
	mu.Lock()
	defer mu.Unlock()
	first := beats[0]
	if first.State != wire.WorkerServing || first.Runners != 3 || first.Threads != 1 || first.Provider != "cpu" ||
		!slices.Equal(first.Models, p.UsedModels()) || first.Gear != "g1" || first.IntervalMs != 500 || first.Seq != 1 ||
		len(first.Stats.Latency) != len(wire.LatencyBucketsMs)+1 {
		t.Errorf("first beat %+v", first)
	}
	for i := 1; i < len(beats); i++ {
		if beats[i].Instance != first.Instance || beats[i].Seq != beats[i-1].Seq+1 || beats[i].AtUnixNano <= beats[i-1].AtUnixNano {
			t.Errorf("beat %d %+v after %+v", i, beats[i], beats[i-1])
		}
	}
	if n := len(beats); beats[n-2].State != wire.WorkerServing {
		t.Errorf("more than one leaving beat: %+v", beats[n-2])
	}
}
