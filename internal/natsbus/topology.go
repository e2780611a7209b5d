// Package natsbus owns CascadeServe's NATS plumbing: connecting with
// production-safe options, the JetStream topology derived from a plan
// (applied idempotently by the controller) and waiting for it (other
// services). The embedded server of the all-in-one binary and the tests is
// package natsembed, which no service binary links.
//
// Names of subjects, streams, consumers and keys come from package wire;
// this package decides their configuration.
package natsbus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// TopologyConfig sets the limits of the streams and consumers. Zero values
// take the defaults documented on each field.
type TopologyConfig struct {
	// Storage is file (default) or memory.
	Storage jetstream.StorageType
	// Replicas of every stream (default 1; 3 in a cluster).
	Replicas int
	// MaxQueue bounds each model's work queue in messages (default 20000).
	// A full queue rejects new publishes (DiscardNew): ingress answers
	// `overloaded`.
	MaxQueue int64
	// MaxQueueBytes bounds each model's work queue in bytes (default 256 MiB).
	MaxQueueBytes int64
	// MaxJobs and MaxJobsBytes bound the jobs stream (default 100000
	// messages, 1 GiB). A full jobs stream refuses new jobs (DiscardNew):
	// the producer's publish fails, nothing accepted is dropped.
	MaxJobs      int64
	MaxJobsBytes int64
	// ResultsMaxBytes bounds the results stream besides its age (default
	// 1 GiB; the oldest results go first).
	ResultsMaxBytes int64
	// DLQMaxMsgs and DLQMaxBytes bound a pipeline's dead letters besides
	// their age (default 100000 messages, 1 GiB; the oldest go first).
	DLQMaxMsgs  int64
	DLQMaxBytes int64
	// ResultsMaxAge is how long results are kept (default 1h).
	ResultsMaxAge time.Duration
	// DLQMaxAge is how long dead letters are kept (default 7 days).
	DLQMaxAge time.Duration
	// Duplicates is the deduplication window of the jobs, results and
	// dead-letter streams (default 2m, NATS's): a producer's retried job
	// and a result published again are stored once.
	Duplicates time.Duration
	// QueueDuplicates is the deduplication window of the models' work
	// queues (default MaxDeliver × AckWait): an envelope or escalation
	// published again by a redelivered batch is stored once. It must cover
	// every redelivery of one message, (MaxDeliver−1) × AckWait. nats-server
	// holds every id of the window in memory; a short window keeps a
	// long-running system as fast as a young one.
	QueueDuplicates time.Duration
	// AckWait is how long a delivered, unacked message waits before
	// redelivery (default 2s, far above any batch's compute time; a stage
	// worker whose batch takes longer tells the server it is still in
	// progress). It is how long a dead worker's batch waits for another.
	AckWait time.Duration
	// MaxDeliver is how often a message is delivered before it goes to the
	// dead-letter subject (default 5).
	MaxDeliver int
	// MaxAckPending caps un-acked messages per consumer over all replicas
	// (default 4096; must be ≥ replicas × max batch × 2).
	MaxAckPending int
	// Logger receives what EnsureTopology does best effort: moving the
	// leaders of a model's partition streams apart in a cluster (default
	// slog.Default()).
	Logger *slog.Logger
	// IdempotencyWindow is how long an idempotency record is kept after
	// its last write (the TTL of the idempotency bucket, default 2m): a
	// repeat of an Idempotency-Key within it gets the first result.
	IdempotencyWindow time.Duration
}

// WithDefaults returns c with zero fields set to their defaults.
func (c TopologyConfig) WithDefaults() TopologyConfig {
	c.Replicas = cmp.Or(c.Replicas, 1)
	c.MaxQueue = cmp.Or(c.MaxQueue, 20000)
	c.MaxQueueBytes = cmp.Or(c.MaxQueueBytes, 256<<20)
	c.MaxJobs = cmp.Or(c.MaxJobs, 100000)
	c.MaxJobsBytes = cmp.Or(c.MaxJobsBytes, 1<<30)
	c.ResultsMaxBytes = cmp.Or(c.ResultsMaxBytes, 1<<30)
	c.DLQMaxMsgs = cmp.Or(c.DLQMaxMsgs, 100000)
	c.DLQMaxBytes = cmp.Or(c.DLQMaxBytes, 1<<30)
	c.ResultsMaxAge = cmp.Or(c.ResultsMaxAge, time.Hour)
	c.DLQMaxAge = cmp.Or(c.DLQMaxAge, 7*24*time.Hour)
	c.Duplicates = cmp.Or(c.Duplicates, 2*time.Minute)
	c.AckWait = cmp.Or(c.AckWait, 2*time.Second)
	c.MaxDeliver = cmp.Or(c.MaxDeliver, 5)
	c.QueueDuplicates = cmp.Or(c.QueueDuplicates, RedeliverySpan(c.AckWait, c.MaxDeliver)+c.AckWait)
	c.MaxAckPending = cmp.Or(c.MaxAckPending, 4096)
	c.IdempotencyWindow = cmp.Or(c.IdempotencyWindow, 2*time.Minute)
	return c
}

// RedeliverySpan is how long after a message's first delivery its last
// redelivery can come, (maxDeliver−1) × ackWait (one ackWait at least): a
// deduplication window must exceed it, or a batch redelivered after a
// worker died between publishing and acking publishes its outputs twice.
func RedeliverySpan(ackWait time.Duration, maxDeliver int) time.Duration {
	return ackWait * time.Duration(max(maxDeliver-1, 1))
}

// ModelStreamConfig is the work-queue stream of one model whose queue is
// not partitioned.
func ModelStreamConfig(pipeline, model string, c TopologyConfig) jetstream.StreamConfig {
	return ModelPartitionStreamConfig(pipeline, model, 0, 1, c)
}

// ModelPartitionStreamConfig is the work-queue stream of partition part of
// a model's queue split into partitions (each with its own limits and, in
// a cluster, its own leader).
func ModelPartitionStreamConfig(pipeline, model string, part, partitions int, c TopologyConfig) jetstream.StreamConfig {
	c = c.WithDefaults()
	desc := fmt.Sprintf("CascadeServe work queue of model %q in pipeline %q", model, pipeline)
	if partitions > 1 {
		desc += fmt.Sprintf(", partition %d of %d", part, partitions)
	}
	s := workQueueStream(wire.ModelPartitionStream(pipeline, model, part, partitions), desc,
		wire.ModelPartitionSubject(pipeline, model, part, partitions), c.MaxQueue, c.MaxQueueBytes, c)
	s.Duplicates = c.QueueDuplicates
	return s
}

// ModelConsumerConfig is the durable pull consumer of one model's stream.
func ModelConsumerConfig(model string, c TopologyConfig) jetstream.ConsumerConfig {
	c = c.WithDefaults()
	return jetstream.ConsumerConfig{
		Durable:       wire.ModelConsumer(model),
		Description:   fmt.Sprintf("CascadeServe workers of model %q", model),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		MaxAckPending: c.MaxAckPending,
		MaxWaiting:    512,
	}
}

// JobsStreamConfig is the durable jobs intake of a pipeline.
func JobsStreamConfig(pipeline string, c TopologyConfig) jetstream.StreamConfig {
	c = c.WithDefaults()
	return workQueueStream(wire.JobsStream(pipeline), fmt.Sprintf("CascadeServe durable jobs of pipeline %q", pipeline),
		wire.JobsSubject(pipeline, ">"), c.MaxJobs, c.MaxJobsBytes, c)
}

// JobsConsumerConfig is the durable consumer ingress instances share.
func JobsConsumerConfig(c TopologyConfig) jetstream.ConsumerConfig {
	c = c.WithDefaults()
	return jetstream.ConsumerConfig{
		Durable:       wire.JobsConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		MaxAckPending: c.MaxAckPending,
	}
}

// ResultsStreamConfig is the results stream shared by all pipelines.
func ResultsStreamConfig(c TopologyConfig) jetstream.StreamConfig {
	c = c.WithDefaults()
	// No bound on the count: results are bounded by age and bytes.
	return boundedStream(wire.ResultsStream, "CascadeServe results of durable jobs, bounded by age",
		wire.ResultsWildcard, c.ResultsMaxAge, 0, c.ResultsMaxBytes, c)
}

// DLQStreamConfig holds a pipeline's dead letters.
func DLQStreamConfig(pipeline string, c TopologyConfig) jetstream.StreamConfig {
	c = c.WithDefaults()
	return boundedStream(wire.DLQStream(pipeline), fmt.Sprintf("CascadeServe dead letters of pipeline %q", pipeline),
		wire.DLQSubject(pipeline, "*"), c.DLQMaxAge, c.DLQMaxMsgs, c.DLQMaxBytes, c)
}

// workQueueStream is a stream on subject that hands each message to one
// consumer and, holding maxMsgs or maxBytes, refuses new publishes
// (DiscardNew): nothing it accepted is dropped. It has no age limit;
// storage, replicas and the deduplication window are c's.
func workQueueStream(name, desc, subject string, maxMsgs, maxBytes int64, c TopologyConfig) jetstream.StreamConfig {
	s := boundedStream(name, desc, subject, 0, maxMsgs, maxBytes, c)
	s.Retention, s.Discard = jetstream.WorkQueuePolicy, jetstream.DiscardNew
	return s
}

// boundedStream is a stream on subject that keeps messages for maxAge (0:
// no limit) and up to maxMsgs (0: no limit) and maxBytes, dropping the
// oldest first (DiscardOld). Storage, replicas and the deduplication window
// are c's (with its defaults applied).
func boundedStream(name, desc, subject string, maxAge time.Duration, maxMsgs, maxBytes int64, c TopologyConfig) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        name,
		Description: desc,
		Subjects:    []string{subject},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      maxAge,
		MaxMsgs:     maxMsgs,
		MaxBytes:    maxBytes,
		Discard:     jetstream.DiscardOld,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
		Duplicates:  c.Duplicates,
	}
}

// KVConfig is the control bucket of a pipeline (keys plan and gear).
func KVConfig(pipeline string, c TopologyConfig) jetstream.KeyValueConfig {
	c = c.WithDefaults()
	return bucket(wire.KVBucket(pipeline), fmt.Sprintf("CascadeServe control state of pipeline %q", pipeline), 10, c)
}

// IdempotencyKVConfig is the idempotency bucket of a pipeline: one record
// per client and Idempotency-Key, written by the ingress (the first
// admission, then its result), expiring IdempotencyWindow after its last
// write, and bounded in bytes like the results stream (records hold
// results; when it is full, keyed requests are answered unavailable).
func IdempotencyKVConfig(pipeline string, c TopologyConfig) jetstream.KeyValueConfig {
	c = c.WithDefaults()
	kv := bucket(wire.IdempotencyBucket(pipeline), fmt.Sprintf("CascadeServe idempotency records of pipeline %q", pipeline), 1, c)
	kv.TTL, kv.MaxBytes = c.IdempotencyWindow, c.ResultsMaxBytes
	return kv
}

// bucket is a key-value bucket keeping history values of each key, with
// c's storage and replicas, without expiry or size limit.
func bucket(name, desc string, history uint8, c TopologyConfig) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      name,
		Description: desc,
		History:     history,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
	}
}

// EnsureTopology creates or updates every stream, consumer and bucket the
// plan needs. It is idempotent: running it again with the same plan changes
// nothing. In a cluster it also spreads the leaders of each model's
// partition streams over the nodes (best effort: a leader it cannot move is
// logged, not an error). Only the controller calls it.
func EnsureTopology(ctx context.Context, js jetstream.JetStream, p *plan.Plan, c TopologyConfig) (jetstream.KeyValue, error) {
	c = c.WithDefaults()
	parts := p.QueuePartitions()
	for _, m := range p.UsedModels() {
		streams := make([]string, parts)
		for part := range parts {
			cfg := ModelPartitionStreamConfig(p.Pipeline, m, part, parts, c)
			s, err := js.CreateOrUpdateStream(ctx, cfg)
			if err != nil {
				return nil, fmt.Errorf("ensure stream of model %q (partition %d): %w", m, part, err)
			}
			if _, err := s.CreateOrUpdateConsumer(ctx, ModelConsumerConfig(m, c)); err != nil {
				return nil, fmt.Errorf("ensure consumer of model %q (partition %d): %w", m, part, err)
			}
			streams[part] = cfg.Name
		}
		// In a cluster, partition k's leader goes to the k-th node (best
		// effort), so a model's queue is served by every node.
		spreadLeaders(ctx, js, streams, c.Logger)
	}
	jobs, err := js.CreateOrUpdateStream(ctx, JobsStreamConfig(p.Pipeline, c))
	if err != nil {
		return nil, fmt.Errorf("ensure jobs stream: %w", err)
	}
	if _, err := jobs.CreateOrUpdateConsumer(ctx, JobsConsumerConfig(c)); err != nil {
		return nil, fmt.Errorf("ensure jobs consumer: %w", err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, ResultsStreamConfig(c)); err != nil {
		return nil, fmt.Errorf("ensure results stream: %w", err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, DLQStreamConfig(p.Pipeline, c)); err != nil {
		return nil, fmt.Errorf("ensure dead-letter stream: %w", err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, IdempotencyKVConfig(p.Pipeline, c)); err != nil {
		return nil, fmt.Errorf("ensure idempotency bucket: %w", err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, KVConfig(p.Pipeline, c))
	if err != nil {
		return nil, fmt.Errorf("ensure control bucket: %w", err)
	}
	return kv, nil
}

// ErrNotReady means the topology (or the plan in the control bucket) does
// not exist yet.
var ErrNotReady = errors.New("topology not ready")

// CheckTopology returns nil when every stream and consumer for the given
// models exists, else an error wrapping ErrNotReady naming what is missing.
func CheckTopology(ctx context.Context, js jetstream.JetStream, pipeline string, models []string, partitions int) error {
	for _, m := range models {
		for part := range max(partitions, 1) {
			name := wire.ModelPartitionStream(pipeline, m, part, partitions)
			s, err := js.Stream(ctx, name)
			if err != nil {
				return fmt.Errorf("%w: stream %s of model %q: %w", ErrNotReady, name, m, err)
			}
			if _, err := s.Consumer(ctx, wire.ModelConsumer(m)); err != nil {
				return fmt.Errorf("%w: consumer of model %q on %s: %w", ErrNotReady, m, name, err)
			}
		}
	}
	if _, err := js.Stream(ctx, wire.JobsStream(pipeline)); err != nil {
		return fmt.Errorf("%w: jobs stream: %w", ErrNotReady, err)
	}
	if _, err := js.Stream(ctx, wire.ResultsStream); err != nil {
		return fmt.Errorf("%w: results stream: %w", ErrNotReady, err)
	}
	if _, err := js.KeyValue(ctx, wire.KVBucket(pipeline)); err != nil {
		return fmt.Errorf("%w: control bucket: %w", ErrNotReady, err)
	}
	return nil
}

// WaitTopology polls CheckTopology every interval until it succeeds or ctx
// ends; services call it before they report ready.
func WaitTopology(ctx context.Context, js jetstream.JetStream, pipeline string, models []string, partitions int, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := CheckTopology(ctx, js, pipeline, models, partitions)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for topology: %w (last: %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}
