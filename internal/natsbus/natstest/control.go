package natstest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// opTimeout bounds each NATS operation of the helpers here.
const opTimeout = 20 * time.Second

// Topology applies p's topology on the server with topo's limits, as the
// controller does at start, and returns the pipeline's control bucket.
func (s *Server) Topology(t testing.TB, p *plan.Plan, topo natsbus.TopologyConfig) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	kv, err := natsbus.EnsureTopology(ctx, s.JS, p, topo)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// PutPlan writes p under the plan key of its control bucket kv, as the
// controller does.
func PutPlan(t testing.TB, kv jetstream.KeyValue, p *plan.Plan) {
	t.Helper()
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	put(t, kv, wire.KeyPlan, b)
}

// PutGear writes gear id of p under the gear key of kv, as the controller
// does, stamped now, and returns what it wrote.
func PutGear(t testing.TB, kv jetstream.KeyValue, p *plan.Plan, id string) wire.GearState {
	t.Helper()
	st := wire.GearState{Gear: id, Index: p.GearByID(id), Reason: "test", AtUnixNano: time.Now().UnixNano()}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	put(t, kv, wire.KeyGear, b)
	return st
}

func put(t testing.TB, kv jetstream.KeyValue, key string, value []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := kv.Put(ctx, key, value); err != nil {
		t.Fatal(err)
	}
}
