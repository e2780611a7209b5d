package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BrokerConfig configures MeasureBroker. Zero values take the defaults in
// the field comments, which are those of the official tool (natscli's
// `nats bench js pub async` and `nats bench js fetch`) except the message
// size.
type BrokerConfig struct {
	// Messages is how many messages each round publishes and then fetches
	// (default 100000, nats bench's --msgs).
	Messages int
	// Size is each message's body in bytes (default 784: `--size 784`, one
	// MNIST image's pixels as bytes); at least 8, the message's index.
	Size int
	// PubBatch is the asynchronous publish window: PubBatch messages are
	// published, then every PubAck of them is awaited before the next
	// (default 500, `js pub async --batch`).
	PubBatch int
	// FetchBatch is each Fetch's size and the consumer's MaxAckPending
	// (default 500, `js fetch --batch`).
	FetchBatch int
	// Rounds is how often the pair is measured (default 2); each phase's
	// best round is the ceiling, as the first round of a process is often
	// the slower (a cold server and heap).
	Rounds int
}

func (c BrokerConfig) withDefaults() BrokerConfig {
	orDefault(&c.Messages, 100000)
	orDefault(&c.Size, 784)
	orDefault(&c.PubBatch, 500)
	orDefault(&c.FetchBatch, 500)
	orDefault(&c.Rounds, 2)
	return c
}

// BrokerRun is one round: the publish phase, then the fetch phase over the
// messages it stored.
type BrokerRun struct {
	Messages int `json:"messages"`
	// PubSeconds runs from the first publish to the last PubAck;
	// PubMsgsPerSec is Messages / PubSeconds.
	PubSeconds    float64 `json:"pub_seconds"`
	PubMsgsPerSec float64 `json:"pub_msgs_per_sec"`
	// PubAcked counts distinct stream sequences in the PubAcks; a correct
	// round has PubAcked = Messages.
	PubAcked int `json:"pub_acked"`
	// FetchSeconds runs from the first Fetch to the last ack flushed to the
	// server; FetchMsgsPerSec is Messages / FetchSeconds.
	FetchSeconds    float64 `json:"fetch_seconds"`
	FetchMsgsPerSec float64 `json:"fetch_msgs_per_sec"`
	Fetches         int     `json:"fetches"`
	// Received counts deliveries (duplicates included), Missing the
	// messages never delivered, Duplicates those delivered more than once;
	// Redelivered and Unacked come from the consumer's state after the
	// round. A correct round has Received = Messages and the rest 0.
	Received    int `json:"received"`
	Missing     int `json:"missing"`
	Duplicates  int `json:"duplicates"`
	Redelivered int `json:"redelivered"`
	Unacked     int `json:"unacked"`
}

// Correct reports whether the round published, delivered and acked every
// message exactly once.
func (r BrokerRun) Correct() bool {
	return r.PubAcked == r.Messages && r.Received == r.Messages &&
		r.Missing == 0 && r.Duplicates == 0 && r.Redelivered == 0 && r.Unacked == 0
}

// Broker is the broker's ceiling as the official tool measures it.
type Broker struct {
	PayloadBytes int         `json:"payload_bytes"`
	PubBatch     int         `json:"pub_batch"`
	FetchBatch   int         `json:"fetch_batch"`
	Runs         []BrokerRun `json:"runs"`
	// PubMsgsPerSec and FetchAckMsgsPerSec are the best rounds' rates.
	PubMsgsPerSec      float64 `json:"pub_msgs_per_sec"`
	FetchAckMsgsPerSec float64 `json:"fetch_ack_msgs_per_sec"`
}

// brokerStream and brokerSubject name the stream of MeasureBroker: run it
// on a server of its own.
const (
	brokerStream  = "CASCADE_BENCH_BROKER"
	brokerSubject = "cascade.bench.broker"
)

// MeasureBroker measures the JetStream server at url the way `nats bench`
// does (natscli, `js pub async --storage file --size 784` then `js fetch`,
// one client each, default settings otherwise), Rounds times:
//
//   - stream: file storage, limits retention, DiscardNew, 1 GB, one
//     replica, no message ids (nats bench's stream);
//   - publish: one connection publishes PubBatch messages with
//     PublishMsgAsync, waits for all their PubAcks, checks them, and
//     repeats until Messages are stored;
//   - fetch: a durable pull consumer (explicit acks, MaxAckPending
//     FetchBatch), one connection Fetch(FetchBatch)es the stored messages
//     and acks each one (Ack, not the synchronous double ack).
//
// Each message carries its index in its first 8 bytes (nats bench sends
// zeros), so the round can check that every message was published,
// delivered and acked exactly once. The stream is deleted at the end.
func MeasureBroker(ctx context.Context, url string, cfg BrokerConfig) (Broker, error) {
	cfg = cfg.withDefaults()
	if cfg.Size < 8 {
		return Broker{}, fmt.Errorf("broker ceiling: message size %d < 8 bytes", cfg.Size)
	}
	c, err := dialClients(url, "cascadeserve-bench-broker", jetstream.WithPublishAsyncMaxPending(max(4000, cfg.PubBatch)))
	if err != nil {
		return Broker{}, fmt.Errorf("broker ceiling: %w", err)
	}
	defer c.Close()
	stream, err := createStream(ctx, c.pjs, jetstream.StreamConfig{
		Name: brokerStream, Subjects: []string{brokerSubject},
		Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardNew, Storage: jetstream.FileStorage,
		Replicas: 1, MaxBytes: 1 << 30, Duplicates: 2 * time.Minute, AllowDirect: true,
	})
	if err != nil {
		return Broker{}, fmt.Errorf("broker ceiling: create stream: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = c.pjs.DeleteStream(dctx, brokerStream)
	}()
	out := Broker{PayloadBytes: cfg.Size, PubBatch: cfg.PubBatch, FetchBatch: cfg.FetchBatch}
	for round := range cfg.Rounds {
		run, err := brokerRound(ctx, cfg, c, stream, fmt.Sprintf("bench%d", round))
		if err != nil {
			return Broker{}, fmt.Errorf("broker ceiling, round %d: %w", round+1, err)
		}
		out.Runs = append(out.Runs, run)
		out.PubMsgsPerSec = max(out.PubMsgsPerSec, run.PubMsgsPerSec)
		out.FetchAckMsgsPerSec = max(out.FetchAckMsgsPerSec, run.FetchMsgsPerSec)
	}
	return out, nil
}

// brokerRound purges the stream, publishes, then fetches and acks through a
// durable consumer called name, deleted at the end.
func brokerRound(ctx context.Context, cfg BrokerConfig, c *benchClients, stream jetstream.Stream, name string) (BrokerRun, error) {
	run := BrokerRun{Messages: cfg.Messages}
	if err := stream.Purge(ctx); err != nil {
		return run, fmt.Errorf("purge: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return run, err
	}
	if err := brokerPublish(ctx, cfg, c.pjs, info.State.LastSeq, &run); err != nil {
		return run, err
	}
	err = brokerFetch(ctx, cfg, c, stream, name, &run)
	return run, err
}

// brokerPublish is a round's publish phase: a window of PubBatch messages,
// then all their PubAcks, until Messages are stored, each carrying its
// index. It counts the distinct sequences after base (the stream's last
// before the round) that the PubAcks name, and times the phase. A window's
// bodies are reused by the next only once every PubAck of it is in, so no
// retry can send a rewritten body.
func brokerPublish(ctx context.Context, cfg BrokerConfig, pjs jetstream.JetStream, base uint64, run *BrokerRun) error {
	n := cfg.Messages
	bodies := make([][]byte, min(cfg.PubBatch, n))
	for i := range bodies {
		bodies[i] = make([]byte, cfg.Size)
	}
	futures := make([]jetstream.PubAckFuture, len(bodies))
	acked := make([]bool, n)
	var err error
	start := time.Now()
	for i := 0; i < n; {
		w := min(cfg.PubBatch, n-i)
		for j := range w {
			binary.LittleEndian.PutUint64(bodies[j], uint64(i+j))
			if futures[j], err = pjs.PublishMsgAsync(&nats.Msg{Subject: brokerSubject, Data: bodies[j]}); err != nil {
				return fmt.Errorf("publish %d: %w", i+j, err)
			}
		}
		select {
		case <-pjs.PublishAsyncComplete():
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(stallTimeout):
			return fmt.Errorf("PubAcks: none for %v (%d pending)", stallTimeout, pjs.PublishAsyncPending())
		}
		for j := range w {
			select {
			case ack := <-futures[j].Ok():
				if s := ack.Sequence - base; ack.Sequence > base && s <= uint64(n) && !acked[s-1] {
					acked[s-1] = true
					run.PubAcked++
				}
			case err := <-futures[j].Err():
				return fmt.Errorf("PubAck of %d: %w", i+j, err)
			}
		}
		i += w
	}
	run.PubSeconds = time.Since(start).Seconds()
	run.PubMsgsPerSec = float64(n) / run.PubSeconds
	return nil
}

// brokerFetch is a round's fetch phase: a durable consumer called name
// (deleted at the end) delivers the stored messages, each acked, until
// Messages have come; the phase is timed to the last ack flushed. It then
// counts the messages missing or delivered twice and, once the server has
// applied the acks, the consumer's redeliveries and unacked messages.
func brokerFetch(ctx context.Context, cfg BrokerConfig, c *benchClients, stream jetstream.Stream, name string, run *BrokerRun) error {
	n := cfg.Messages
	if _, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: name, DeliverPolicy: jetstream.DeliverAllPolicy, AckPolicy: jetstream.AckExplicitPolicy,
		ReplayPolicy: jetstream.ReplayInstantPolicy, MaxAckPending: cfg.FetchBatch, InactiveThreshold: 10 * time.Second,
	}); err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = stream.DeleteConsumer(dctx, name)
	}()
	cons, err := c.sjs.Consumer(ctx, brokerStream, name)
	if err != nil {
		return fmt.Errorf("bind consumer: %w", err)
	}
	if err := c.sub.Flush(); err != nil {
		return err
	}
	seen := make([]uint8, n)
	start := time.Now()
	if err := fetchAndAck(ctx, cfg, cons, seen, run); err != nil {
		return err
	}
	// Acks are published without a reply: a flush (a round trip behind
	// them) puts them all in the server before the clock stops.
	if err := c.sub.Flush(); err != nil {
		return fmt.Errorf("flush acks: %w", err)
	}
	run.FetchSeconds = time.Since(start).Seconds()
	run.FetchMsgsPerSec = float64(n) / run.FetchSeconds
	for _, k := range seen {
		switch k {
		case 0:
			run.Missing++
		case 2:
			run.Duplicates++
		}
	}
	// The server applies acks asynchronously: wait (untimed) until the
	// consumer has them all, then read its counts.
	ci, err := waitAcked(ctx, cons)
	if err != nil {
		return err
	}
	run.Unacked = ci.NumAckPending
	run.Redelivered = max(int(ci.Delivered.Consumer)-n, 0)
	return nil
}

// fetchAndAck fetches FetchBatch messages at a time through cons and acks
// each, until Messages have been received; seen[i] counts the deliveries of
// message i, up to 2. A fetch that brings nothing fails the round.
func fetchAndAck(ctx context.Context, cfg BrokerConfig, cons jetstream.Consumer, seen []uint8, run *BrokerRun) error {
	n := cfg.Messages
	for run.Received < n {
		if err := ctx.Err(); err != nil {
			return err
		}
		mb, err := cons.Fetch(min(cfg.FetchBatch, n-run.Received), jetstream.FetchMaxWait(stallTimeout))
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		got := 0
		for m := range mb.Messages() {
			got++
			run.Received++
			if d := m.Data(); len(d) >= 8 {
				if i := binary.LittleEndian.Uint64(d); i < uint64(n) {
					seen[i] = min(seen[i]+1, 2)
				}
			}
			if err := m.Ack(); err != nil {
				return fmt.Errorf("ack: %w", err)
			}
		}
		if err := mb.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("fetch: %w", err)
		}
		if got == 0 {
			return fmt.Errorf("stalled at %d of %d messages", run.Received, n)
		}
		run.Fetches++
	}
	return nil
}

// benchClients are the two connections of a measurement to one server,
// each with its JetStream context: the publisher's, as ingress has one of
// its own, and the fetchers', shared as a worker's runners share theirs.
type benchClients struct {
	pub, sub *nats.Conn
	pjs, sjs jetstream.JetStream
}

// dialClients connects the publisher and the fetchers to url, named
// name+"-publisher" and name+"-fetcher"; the publisher's JetStream context
// takes pubOpts. On an error it closes what it opened. The caller closes
// the clients.
func dialClients(url, name string, pubOpts ...jetstream.JetStreamOpt) (*benchClients, error) {
	pub, err := nats.Connect(url, nats.Name(name+"-publisher"))
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	sub, err := nats.Connect(url, nats.Name(name+"-fetcher"))
	if err != nil {
		pub.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	c := &benchClients{pub: pub, sub: sub}
	if c.pjs, err = jetstream.New(pub, pubOpts...); err == nil {
		c.sjs, err = jetstream.New(sub)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes both connections.
func (c *benchClients) Close() {
	c.pub.Close()
	c.sub.Close()
}

// waitAcked returns the consumer's info once nothing is pending an ack, or
// after 5 s.
func waitAcked(ctx context.Context, cons jetstream.Consumer) (*jetstream.ConsumerInfo, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ci, err := cons.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("consumer info: %w", err)
		}
		if ci.NumAckPending == 0 || time.Now().After(deadline) {
			return ci, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
