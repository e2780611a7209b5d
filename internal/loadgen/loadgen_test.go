package loadgen_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// respond stands in for a pipeline: it answers every request with the
// first input value as the label, and an overloaded error for value 9.
func respond(t *testing.T, srv *natstest.Server) { respondTimes(t, srv, 1) }

// respondTimes is respond sending each answer n times.
func respondTimes(t *testing.T, srv *natstest.Server, n int) {
	t.Helper()
	nc := srv.Connect(t)
	codec := wire.NewCodec()
	_, err := nc.QueueSubscribe(wire.InferSubject("p"), wire.IngressQueue, func(m *nats.Msg) {
		var req wire.Request
		if err := wire.DecodeRequest(m.Data, &req); err != nil {
			t.Error(err)
			return
		}
		vals, _ := req.Input.AppendFloat32s(nil, 1)
		res := wire.Result{ID: "x", Label: int(vals[0]), Gear: "g", AnsweredBy: "m"}
		if vals[0] == 9 {
			res.Error = wire.Errorf(wire.CodeOverloaded, "full")
		}
		b, _ := codec.EncodeResult(&res)
		for range n {
			m.Respond(b)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
}

func items() *dataset.Set {
	s := &dataset.Set{ItemShape: []int64{2}}
	for i := range 10 {
		s.Data = append(s.Data, float32(i), 0)
		s.Labels = append(s.Labels, int32(i%5)) // right for 0..4, wrong for 5..8
	}
	return s
}

func TestRunCountsEveryOutcome(t *testing.T) {
	srv := natstest.Start(t)
	respond(t, srv)
	for _, tc := range []struct {
		name string
		cfg  loadgen.Config
	}{
		{"open loop", loadgen.Config{Schedule: loadgen.Constant(2000), MaxRequests: 200, Duration: 10 * time.Second}},
		{"closed loop", loadgen.Config{Concurrency: 8, MaxRequests: 200, Duration: 10 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Pipeline, cfg.Items, cfg.Timeout = "p", items(), 2*time.Second
			ticks := 0
			cfg.Tick, cfg.TickEvery = func(loadgen.Snapshot) { ticks++ }, 10*time.Millisecond
			rep, err := loadgen.Run(context.Background(), srv.Conn, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Sent != 200 || rep.Lost != 0 || len(rep.Outcomes) != 200 {
				t.Fatalf("sent %d lost %d outcomes %d, want 200/0/200", rep.Sent, rep.Lost, len(rep.Outcomes))
			}
			if got := rep.ErrorCounts()[wire.CodeOverloaded]; got != 20 {
				t.Errorf("overloaded = %d, want 20", got)
			}
			if rep.Answered != 180 {
				t.Errorf("answered = %d, want 180", rep.Answered)
			}
			// Items 0..4 are right, 5..8 wrong: 100 of 180 answers.
			if acc := rep.Accuracy(); acc < 100.0/180-1e-9 || acc > 100.0/180+1e-9 {
				t.Errorf("accuracy = %v, want %v", acc, 100.0/180)
			}
			if rep.ByGear()["g"] != 180 || rep.Percentile(0.95) <= 0 || ticks == 0 {
				t.Errorf("by gear %v, p95 %v, ticks %d", rep.ByGear(), rep.Percentile(0.95), ticks)
			}
		})
	}
}

func TestRunCountsRepliesToAnsweredRequestsAsDuplicates(t *testing.T) {
	srv := natstest.Start(t)
	respondTimes(t, srv, 2)
	start := time.Now()
	rep, err := loadgen.Run(context.Background(), srv.Conn, loadgen.Config{
		Pipeline: "p", Items: items(), Timeout: 2 * time.Second,
		Concurrency: 4, MaxRequests: 100, Duration: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	// One subscription delivers the replies in order: every second copy
	// but perhaps the last is handled before the run ends.
	if rep.Sent != 100 || len(rep.Outcomes) != 100 || rep.Duplicates < 99 || rep.Duplicates > 100 {
		t.Fatalf("sent %d, outcomes %d, duplicates %d; want 100, 100, 99 or 100", rep.Sent, len(rep.Outcomes), rep.Duplicates)
	}
	// Outcomes keep every field through the run's compact records.
	for _, o := range rep.Outcomes {
		wantCode := wire.Code("")
		if o.Index == 9 {
			wantCode = wire.CodeOverloaded
		}
		if o.Code != wantCode || o.Sent.Before(start) || o.Latency <= 0 {
			t.Fatalf("outcome %+v", o)
		}
		if o.Code == "" && (o.Gear != "g" || o.AnsweredBy != "m" || o.Label != o.Index || o.Correct != (o.Index%5 == o.Index)) {
			t.Fatalf("outcome %+v: label or score wrong", o)
		}
	}
}
