package bench

import (
	"context"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
)

func TestMeasureBrokerCountsEveryMessageOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tests := []struct {
		name string
		cfg  BrokerConfig
	}{
		// Neither batch divides the count: the last window and fetch are short.
		{"two rounds, ragged batches", BrokerConfig{Messages: 1000, PubBatch: 300, FetchBatch: 70, Rounds: 2}},
		{"batches above the count, smallest body", BrokerConfig{Messages: 50, Size: 8, PubBatch: 500, FetchBatch: 500, Rounds: 1}},
		{"one at a time", BrokerConfig{Messages: 20, PubBatch: 1, FetchBatch: 1, Rounds: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.Start(t)
			b, err := MeasureBroker(ctx, srv.URL, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.cfg.withDefaults()
			if len(b.Runs) != want.Rounds || b.PayloadBytes != want.Size || b.PubBatch != want.PubBatch || b.FetchBatch != want.FetchBatch {
				t.Fatalf("broker %+v, want %d rounds of %+v", b, want.Rounds, want)
			}
			bestPub, bestFetch := 0.0, 0.0
			for i, r := range b.Runs {
				if !r.Correct() || r.Messages != want.Messages || r.PubAcked != want.Messages || r.Received != want.Messages {
					t.Errorf("round %d: %+v, want each of %d messages published, delivered and acked once", i, r, want.Messages)
				}
				if !(r.PubMsgsPerSec > 0) || !(r.FetchMsgsPerSec > 0) || !(r.PubSeconds > 0) || !(r.FetchSeconds > 0) {
					t.Errorf("round %d: rates %v and %v over %v and %v s, want positive", i, r.PubMsgsPerSec, r.FetchMsgsPerSec, r.PubSeconds, r.FetchSeconds)
				}
				if wantFetches := (want.Messages + want.FetchBatch - 1) / want.FetchBatch; r.Fetches != wantFetches {
					t.Errorf("round %d: %d fetches, want %d full ones", i, r.Fetches, wantFetches)
				}
				bestPub, bestFetch = max(bestPub, r.PubMsgsPerSec), max(bestFetch, r.FetchMsgsPerSec)
			}
			if b.PubMsgsPerSec != bestPub || b.FetchAckMsgsPerSec != bestFetch {
				t.Errorf("ceiling %v / %v msg/s, want the best rounds' %v / %v", b.PubMsgsPerSec, b.FetchAckMsgsPerSec, bestPub, bestFetch)
			}
			// MeasureBroker deletes its stream (and every round its consumer).
			checkNoStreams(ctx, t, srv)
		})
	}
}

// checkNoStreams fails the test when srv still has a stream: a measurement
// deletes what it made.
func checkNoStreams(ctx context.Context, t *testing.T, srv *natstest.Server) {
	t.Helper()
	names := srv.JS.StreamNames(ctx)
	for name := range names.Name() {
		t.Errorf("stream %s left behind", name)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestMeasureBrokerRejectsABodyTooSmallForItsIndex(t *testing.T) {
	if _, err := MeasureBroker(context.Background(), "nats://127.0.0.1:1", BrokerConfig{Size: 7}); err == nil {
		t.Fatal("a 7-byte body was accepted")
	}
}

// BenchmarkBrokerFetchAck measures the broker ceiling's fetch+ack phase
// (and its publish phase) at the official tool's settings, 20000 messages
// a round: go test -run '^$' -bench BrokerFetchAck ./internal/bench
func BenchmarkBrokerFetchAck(b *testing.B) {
	srv := natstest.Start(b)
	ctx := context.Background()
	pub, fetch := 0.0, 0.0
	for b.Loop() {
		c, err := MeasureBroker(ctx, srv.URL, BrokerConfig{Messages: 20000, Rounds: 1})
		if err != nil {
			b.Fatal(err)
		}
		pub, fetch = max(pub, c.PubMsgsPerSec), max(fetch, c.FetchAckMsgsPerSec)
	}
	b.ReportMetric(pub, "pub-msgs/s")
	b.ReportMetric(fetch, "fetch-ack-msgs/s")
}
