package bench

import (
	"context"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func TestMeasureCeilingCountsEveryMessageOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tests := []struct {
		name string
		cfg  CeilingConfig
	}{
		{"two batch sizes, two fetchers", CeilingConfig{Batches: []int{8, 32}, Rounds: 2, Fetchers: 2, Messages: 500}},
		// A backlog smaller than a batch: fetches come back partly filled.
		{"small backlog", CeilingConfig{Batches: []int{16}, Rounds: 1, Fetchers: 3, Messages: 300, Backlog: 5}},
		{"one fetcher, tiny payload", CeilingConfig{Batches: []int{1}, Rounds: 1, Fetchers: 1, Messages: 50, Payload: []byte("x")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.Start(t)
			c, err := MeasureCeiling(ctx, srv.URL, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			nb := len(tc.cfg.Batches)
			if len(c.Runs) != nb*tc.cfg.Rounds {
				t.Fatalf("%d runs for %d batch sizes × %d rounds", len(c.Runs), nb, tc.cfg.Rounds)
			}
			for i, r := range c.Runs {
				if r.Batch != tc.cfg.Batches[i%nb] || r.Fetchers != tc.cfg.Fetchers {
					t.Errorf("run %d: batch %d fetchers %d, want %d and %d", i, r.Batch, r.Fetchers, tc.cfg.Batches[i%nb], tc.cfg.Fetchers)
				}
				if r.Messages != tc.cfg.Messages || r.Received != tc.cfg.Messages || r.Missing != 0 || r.Duplicates != 0 {
					t.Errorf("run %d: messages %d received %d missing %d duplicates %d, want each of %d exactly once",
						i, r.Messages, r.Received, r.Missing, r.Duplicates, tc.cfg.Messages)
				}
				if !(r.HopsPerSec > 0) || !(r.Seconds > 0) {
					t.Errorf("run %d: %v hops/s over %v s, want positive", i, r.HopsPerSec, r.Seconds)
				}
				if r.Fetches < 1 || r.MeanBatch > float64(r.Batch) || r.MeanBatch < 1 {
					t.Errorf("run %d: %d fetches of mean %.1f with max batch %d", i, r.Fetches, r.MeanBatch, r.Batch)
				}
				if c.Best.HopsPerSec < r.HopsPerSec {
					t.Errorf("best %v hops/s is below run %d's %v", c.Best.HopsPerSec, i, r.HopsPerSec)
				}
			}
			wantPayload := len(tc.cfg.Payload)
			if tc.cfg.Payload == nil {
				wantPayload = len(PayloadLike(784))
			}
			if c.PayloadBytes != wantPayload {
				t.Errorf("payload %d bytes, want %d", c.PayloadBytes, wantPayload)
			}
			// MeasureCeiling deletes its stream (and every run its consumer).
			checkNoStreams(ctx, t, srv)
		})
	}
}

func TestPayloadLikeIsAnMNISTSizedItem(t *testing.T) {
	b := PayloadLike(784)
	var it wire.Item
	if err := wire.DecodeItem(b, &it); err != nil {
		t.Fatal(err)
	}
	if got := it.Input.Elements(); got != 784 {
		t.Fatalf("payload holds %d values, want 784", got)
	}
	// 784 float32 values are 3136 bytes; the envelope adds a few hundred.
	if len(b) < 3136 || len(b) > 3600 {
		t.Fatalf("payload is %d bytes, want about 3.2 KB", len(b))
	}
}

// BenchmarkJetStreamHop measures one publish→fetch→ack hop of an
// MNIST-sized item through a file-backed work queue, batch 64, two
// fetchers: go test -run '^$' -bench JetStreamHop ./internal/bench
func BenchmarkJetStreamHop(b *testing.B) {
	srv := natstest.Start(b)
	ctx := context.Background()
	const perRun = 5000
	b.ReportAllocs()
	hops, secs := 0, 0.0
	for b.Loop() {
		c, err := MeasureCeiling(ctx, srv.URL, CeilingConfig{Batches: []int{64}, Rounds: 1, Messages: perRun})
		if err != nil {
			b.Fatal(err)
		}
		hops += c.Best.Messages
		secs += c.Best.Seconds
	}
	if secs > 0 {
		b.ReportMetric(float64(hops)/secs, "hops/s")
		b.ReportMetric(secs*1e9/float64(hops), "ns/hop")
	}
}
