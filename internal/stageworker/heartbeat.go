package stageworker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// HeartbeatInterval is how often a worker announces itself on
// wire.WorkerStatsSubject. The controller counts a worker gone after three
// missed beats.
const HeartbeatInterval = 500 * time.Millisecond

// resultStats accumulates the counters of wire.WorkerCounters from every
// result the worker produces. It is shared by the runners.
type resultStats struct {
	mu sync.Mutex
	c  wire.WorkerCounters
}

func newResultStats() *resultStats {
	return &resultStats{c: wire.WorkerCounters{
		AnsweredBy:    map[string]uint64{},
		ConfidenceSum: map[string]float64{},
		Latency:       make([]uint64, len(wire.LatencyBucketsMs)+1),
	}}
}

// observe counts one result. Latency is admission (ingress clock) to now
// (worker clock), as Result.TotalNs says.
func (s *resultStats) observe(res *wire.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c.Results++
	if res.TotalNs > 0 {
		ms := float64(res.TotalNs) / 1e6
		s.c.Latency[wire.LatencyBucket(ms)]++
		s.c.LatencySumMs += ms
	} else {
		s.c.Latency[0]++
	}
	if res.Error != nil {
		s.c.Errors++
		return
	}
	if res.Degraded {
		s.c.Degraded++
	}
	s.c.AnsweredBy[res.AnsweredBy]++
	s.c.ConfidenceSum[res.AnsweredBy] += res.Confidence
}

// snapshot returns a copy of the counters.
func (s *resultStats) snapshot() wire.WorkerCounters {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.c
	c.AnsweredBy = maps.Clone(s.c.AnsweredBy)
	c.ConfidenceSum = maps.Clone(s.c.ConfidenceSum)
	c.Latency = slices.Clone(s.c.Latency)
	return c
}

// heartbeat announces the worker on wire.WorkerStatsSubject every
// HeartbeatInterval until ctx ends, then sends a last beat in state
// wire.WorkerLeaving so the controller drops the worker's runners from the
// live capacity at once. A failed publish is logged once (until it
// succeeds again) and never stops the worker: the heartbeat informs the
// controller's capacity estimate and the dashboard, not the serving path.
func (w *worker) heartbeat(ctx context.Context, models []string) error {
	hb := wire.WorkerHeartbeat{
		Instance: instanceName(), Models: slices.Clone(models), Runners: w.cfg.Runners,
		Threads: w.cfg.Threads, Provider: w.cfg.Provider,
		IntervalMs: float64(HeartbeatInterval) / float64(time.Millisecond), StartedUnixNano: w.now().UnixNano(),
	}
	subject := wire.WorkerStatsSubject(w.cfg.Pipeline, hb.Instance)
	w.logger.Info("announcing the worker", "instance", hb.Instance, "subject", subject, "interval", HeartbeatInterval)
	failing := false
	beat := func(state string) {
		hb.Seq++
		hb.State = state
		hb.AtUnixNano = w.now().UnixNano()
		if c := w.ctl.load(); c != nil {
			hb.Gear = c.Gear.ID
		}
		hb.Stats = w.metrics.results.snapshot()
		body, err := json.Marshal(&hb)
		if err == nil {
			err = w.nc.Publish(subject, body)
		}
		switch {
		case err != nil && !failing:
			failing = true
			w.logger.Warn("heartbeat not published", "subject", subject, "err", err)
		case err == nil && failing:
			failing = false
			w.logger.Info("heartbeat published again", "subject", subject)
		}
	}
	beat(wire.WorkerServing)
	tick := time.NewTicker(HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			beat(wire.WorkerLeaving)
			_ = w.nc.FlushTimeout(time.Second)
			return nil
		case <-tick.C:
			beat(wire.WorkerServing)
		}
	}
}

// instanceName names this worker instance in its heartbeat subject: the
// host name (a pod or container name in a deployment) and a random suffix,
// so that several workers of one process or a restarted worker on the same
// host are told apart. It is a wire token.
func instanceName() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, host)
	if len(host) > 48 {
		host = host[:48]
	}
	if host == "" {
		host = "worker"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}
