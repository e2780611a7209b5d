package natsbus

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Spreading the leaders of a model's partition streams over a cluster's
// nodes: partition k prefers the k-th (mod n) of the servers that host the
// model's partitions, in name order, and a stream whose leader is elsewhere
// is asked to step down in favour of it (the stream leader stepdown request
// names a preferred server, nats-server ≥ 2.11). A preferred server that
// does not host the partition, or is offline, gives way to the hosting
// server that leads the fewest of the model's partitions so far.
//
// Best effort and bounded: errors are logged, never returned, and a leader
// that lands elsewhere (its preferred server could not take over) is asked
// again up to leaderRounds times in all.
const (
	leaderRounds = 3
	// leaderSettle bounds the wait for the moved streams to elect their
	// new leaders before the next round looks again; an election after a
	// refused transfer takes the raft election timeout (seconds).
	leaderSettle = 10 * time.Second
	// leaderRequest bounds each JetStream API call here.
	leaderRequest = 5 * time.Second
)

// spreadLeaders spreads the leaders of streams (the partitions of one
// model, in partition order) over the servers hosting them. It does
// nothing on a single server, for fewer than two streams, or for streams
// without replicas (a leader can only move to a peer).
func spreadLeaders(ctx context.Context, js jetstream.JetStream, streams []string, log *slog.Logger) {
	if len(streams) < 2 {
		return
	}
	if log == nil {
		log = slog.Default()
	}
	for round := range leaderRounds {
		clusters, ok := streamClusters(ctx, js, streams, log)
		if !ok {
			return
		}
		targets := leaderTargets(clusters)
		var moved []string
		for k, name := range streams {
			from, to := clusters[k].Leader, targets[k]
			if to == "" || from == to {
				continue
			}
			if err := stepDownTo(ctx, js, name, to); err != nil {
				log.Warn("could not move stream leader", "stream", name, "from", from, "to", to, "err", err)
				continue
			}
			log.Info("moved stream leader", "stream", name, "from", from, "to", to)
			moved = append(moved, name)
		}
		if len(moved) == 0 || round == leaderRounds-1 {
			return
		}
		if !waitLeaders(ctx, js, moved) {
			log.Warn("stream leaders not settled after stepdown", "streams", strings.Join(moved, ","), "wait", leaderSettle)
			return
		}
	}
}

// streamClusters returns the cluster info of each stream; false (after
// logging) when a stream cannot be read, has no leader yet, or there is
// nothing to spread: a single server or a stream without replicas.
func streamClusters(ctx context.Context, js jetstream.JetStream, streams []string, log *slog.Logger) ([]*jetstream.ClusterInfo, bool) {
	out := make([]*jetstream.ClusterInfo, len(streams))
	for k, name := range streams {
		info, err := streamInfo(ctx, js, name)
		if err != nil {
			log.Warn("could not read stream leader", "stream", name, "err", err)
			return nil, false
		}
		c := info.Cluster
		if c == nil || len(c.Replicas) == 0 {
			return nil, false // single server or R1: no peer to move to
		}
		if c.Leader == "" {
			log.Warn("stream has no leader, not spreading leaders", "stream", name)
			return nil, false
		}
		out[k] = c
	}
	return out, true
}

func streamInfo(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, leaderRequest)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	return s.CachedInfo(), nil
}

// leaderTargets picks the leader each stream should have: the k-th (mod n)
// of the servers hosting any of them in name order, or, where that one is
// no online peer of stream k, the online peer leading the fewest streams
// so far (its current leader first on a tie, so a second run with the same
// peers moves nothing). "" leaves a stream as it is.
func leaderTargets(clusters []*jetstream.ClusterInfo) []string {
	var servers []string
	eligible := make([]map[string]bool, len(clusters))
	for k, c := range clusters {
		eligible[k] = map[string]bool{c.Leader: true}
		servers = append(servers, c.Leader)
		for _, p := range c.Replicas {
			if p == nil {
				continue
			}
			servers = append(servers, p.Name)
			if !p.Offline && !p.Pending {
				eligible[k][p.Name] = true
			}
		}
	}
	slices.Sort(servers)
	servers = slices.Compact(servers)
	count := map[string]int{}
	targets := make([]string, len(clusters))
	for k, c := range clusters {
		to := servers[k%len(servers)]
		if !eligible[k][to] {
			to = c.Leader
			for _, s := range servers {
				if eligible[k][s] && count[s] < count[to] {
					to = s
				}
			}
		}
		count[to]++
		targets[k] = to
	}
	return targets
}

// stepDownTo asks the leader of stream name to hand over to server to.
func stepDownTo(ctx context.Context, js jetstream.JetStream, name, to string) error {
	req, err := json.Marshal(map[string]any{"placement": map[string]string{"preferred": to}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, leaderRequest)
	defer cancel()
	msg, err := js.Conn().RequestWithContext(ctx, apiPrefix(js)+"STREAM.LEADER.STEPDOWN."+name, req)
	if err != nil {
		return err
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Success bool                `json:"success"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("decode stepdown response: %w", err)
	}
	if resp.Error != nil {
		return resp.Error
	}
	if !resp.Success {
		return fmt.Errorf("stepdown not acknowledged: %s", msg.Data)
	}
	return nil
}

// apiPrefix is the JetStream API prefix js sends requests with.
func apiPrefix(js jetstream.JetStream) string {
	o := js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	default:
		return jetstream.DefaultAPIPrefix
	}
}

// waitLeaders waits until every stream has a leader again (elected after
// a stepdown), at most leaderSettle; false when one has none by then.
func waitLeaders(ctx context.Context, js jetstream.JetStream, streams []string) bool {
	ctx, cancel := context.WithTimeout(ctx, leaderSettle)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		settled := true
		for _, name := range streams {
			info, err := streamInfo(ctx, js, name)
			if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
				settled = false
				break
			}
		}
		if settled {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}
