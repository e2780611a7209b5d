package controller

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/envconfig"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// Config configures the controller. Every field is read from the environment
// variable named in its tag with the prefix CASCADE_ (e.g. CASCADE_PLAN).
type Config struct {
	// Process holds the settings every service reads alike: NATS URL,
	// pipeline, metrics endpoint protection, logging.
	servicemain.Process
	// MetricsAddr is where /metrics is served (used by the main); set it to
	// the empty string to serve nothing.
	MetricsAddr string `env:"METRICS_ADDR" envDefault:"127.0.0.1:9091"`

	// Plan is the path of the gear plan file. The controller binary
	// requires it and reads it with LoadPlan (`cascadeserve up` hands over
	// its plan instead). The MNIST plan is models/mnist/plan.json in the
	// repository.
	Plan string `env:"PLAN"`
	// Gear, if set, pins a gear id: the controller writes it and never
	// switches (benchmarks and tests).
	Gear string `env:"GEAR"`
	// UpshiftBacklog is the longest acceptable time for the current gear's
	// spare capacity to drain the items waiting at its models; beyond it the
	// controller moves to a cheaper gear at once (see Policy). Default
	// 250ms: a burst over the gear's capacity is seen within a sample or
	// two, before the rate window has caught up with it.
	UpshiftBacklog time.Duration `env:"UPSHIFT_BACKLOG" envDefault:"250ms"`

	// QueuePartitions splits each model's work queue into this many
	// partitions, a stream each (CASCADE_QUEUE_PARTITIONS, default 0: the
	// plan's `partitions`, 1 when it has none). Ingress and workers follow
	// the plan the controller writes; change it only with every service
	// restarted, on empty queues.
	QueuePartitions int `env:"QUEUE_PARTITIONS" envDefault:"0"`
	// QueueMaxMsgs bounds each model's work queue in messages; a full queue
	// makes ingress answer `overloaded`. Default 20000.
	QueueMaxMsgs int64 `env:"QUEUE_MAX_MSGS" envDefault:"20000"`
	// QueueMaxBytes bounds each model's work queue in bytes. Default 256 MiB.
	QueueMaxBytes int64 `env:"QUEUE_MAX_BYTES" envDefault:"268435456"`
	// Storage of every stream and the control bucket: file or memory.
	Storage string `env:"STORAGE" envDefault:"file"`
	// Replicas of every stream (1 on a single server, 3 in a cluster).
	Replicas int `env:"REPLICAS" envDefault:"1"`
	// AckWait is how long a delivered, unacked item waits before redelivery:
	// how long a dead worker's batch waits for another worker. A worker whose
	// batch takes longer tells the server it is still in progress.
	AckWait time.Duration `env:"ACK_WAIT" envDefault:"2s"`
	// MaxDeliver is how often an item is delivered before it is dead-lettered.
	MaxDeliver int `env:"MAX_DELIVER" envDefault:"5"`
	// MaxAckPending caps un-acked items per model consumer over all workers
	// (must be ≥ workers × max batch × 2).
	MaxAckPending int `env:"MAX_ACK_PENDING" envDefault:"4096"`
	// IdempotencyWindow is how long the ingress remembers an
	// Idempotency-Key and its result (the TTL of the idempotency bucket,
	// counted from the record's last write): a repeat within it gets the
	// first request's result.
	IdempotencyWindow time.Duration `env:"IDEMPOTENCY_WINDOW" envDefault:"2m"`
	// DedupeWindow is the deduplication window (Nats-Msg-Id) of the jobs,
	// results and dead-letter streams: a producer's job or a result
	// published again within it is stored once. It must exceed
	// (MaxDeliver−1) × AckWait, so that a result published again by a batch
	// redelivered after a worker died between publishing and acking is
	// deduplicated. Default 2m (NATS's).
	DedupeWindow time.Duration `env:"DEDUPE_WINDOW" envDefault:"2m"`
	// QueueDedupeWindow is the deduplication window of the models' work
	// queues (envelopes and escalations). It must exceed (MaxDeliver−1) ×
	// AckWait, every redelivery of one batch. nats-server keeps every id
	// of the window in memory, and a long window slows a long-running
	// system: on the 2-core box, after two minutes at 40,000 req/s, p95 read
	// 37–56 ms with a 2-minute window, 26–30 ms with 30 s and 13–20 ms with
	// 10 s. Default (0): MaxDeliver × AckWait, 10s.
	QueueDedupeWindow time.Duration `env:"QUEUE_DEDUPE_WINDOW"`
}

// ConfigFromEnv parses the configuration from environ (names with the
// CASCADE_ prefix) and validates it.
func ConfigFromEnv(environ map[string]string) (Config, error) {
	var cfg Config
	if err := envconfig.Parse(&cfg, environ, map[string]*string{"CASCADE_METRICS_ADDR": &cfg.MetricsAddr}); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// ErrInvalidConfig marks a configuration that fails Validate.
var ErrInvalidConfig = errors.New("invalid controller config")

// Validate reports every problem of the configuration together.
func (c Config) Validate() error {
	problems := servicemain.Problems{c.Process.Validate()}
	problems.If(c.UpshiftBacklog <= 0, "CASCADE_UPSHIFT_BACKLOG must be > 0, got %v", c.UpshiftBacklog)
	problems.If(c.QueuePartitions < 0 || c.QueuePartitions > plan.MaxPartitions, "CASCADE_QUEUE_PARTITIONS must be in [0,%d], got %d", plan.MaxPartitions, c.QueuePartitions)
	problems.If(c.QueueMaxMsgs < 1, "CASCADE_QUEUE_MAX_MSGS must be >= 1, got %d", c.QueueMaxMsgs)
	problems.If(c.QueueMaxBytes < 1, "CASCADE_QUEUE_MAX_BYTES must be >= 1, got %d", c.QueueMaxBytes)
	_, err := storageType(c.Storage)
	problems.Add(err)
	problems.If(c.Replicas < 1 || c.Replicas > 5, "CASCADE_REPLICAS must be in [1,5], got %d", c.Replicas)
	problems.If(c.AckWait < time.Second, "CASCADE_ACK_WAIT must be >= 1s, got %v", c.AckWait)
	problems.If(c.MaxDeliver < 1, "CASCADE_MAX_DELIVER must be >= 1, got %d", c.MaxDeliver)
	problems.If(c.MaxAckPending < 1, "CASCADE_MAX_ACK_PENDING must be >= 1, got %d", c.MaxAckPending)
	problems.If(c.IdempotencyWindow < time.Second, "CASCADE_IDEMPOTENCY_WINDOW must be >= 1s, got %v", c.IdempotencyWindow)
	redeliveries := natsbus.RedeliverySpan(c.AckWait, c.MaxDeliver)
	problems.If(c.DedupeWindow <= redeliveries, "CASCADE_DEDUPE_WINDOW must exceed (CASCADE_MAX_DELIVER−1) × CASCADE_ACK_WAIT (%v), got %v: a batch redelivered after a worker died between publishing and acking would publish its results twice", redeliveries, c.DedupeWindow)
	problems.If(c.QueueDedupeWindow < 0 || (c.QueueDedupeWindow > 0 && c.QueueDedupeWindow <= redeliveries), "CASCADE_QUEUE_DEDUPE_WINDOW must be 0 (MaxDeliver × AckWait) or exceed (CASCADE_MAX_DELIVER−1) × CASCADE_ACK_WAIT (%v), got %v: a batch redelivered after a worker died between publishing and acking would queue its escalations twice", redeliveries, c.QueueDedupeWindow)
	return problems.Err(ErrInvalidConfig)
}

// Topology returns the stream and consumer limits of the configuration.
func (c Config) Topology() (natsbus.TopologyConfig, error) {
	st, err := storageType(c.Storage)
	if err != nil {
		return natsbus.TopologyConfig{}, err
	}
	return natsbus.TopologyConfig{
		Storage:         st,
		Replicas:        c.Replicas,
		MaxQueue:        c.QueueMaxMsgs,
		MaxQueueBytes:   c.QueueMaxBytes,
		AckWait:         c.AckWait,
		MaxDeliver:      c.MaxDeliver,
		MaxAckPending:   c.MaxAckPending,
		Duplicates:      c.DedupeWindow,
		QueueDuplicates: c.QueueDedupeWindow,

		IdempotencyWindow: c.IdempotencyWindow,
	}, nil
}

func storageType(s string) (jetstream.StorageType, error) {
	switch s {
	case "file", "":
		return jetstream.FileStorage, nil
	case "memory":
		return jetstream.MemoryStorage, nil
	}
	return 0, fmt.Errorf("CASCADE_STORAGE %q: want file or memory", s)
}

// Deps are the controller's dependencies.
type Deps struct {
	// Deps are the logger, metrics registerer, NATS connection and clock
	// every service takes. The clock stamps gear writes (AtUnixNano) and
	// times dwells and stats. HTTP, if set, gets the live dashboard
	// (/dashboard, /dashboard/state, /dashboard/events; package
	// dashboard).
	servicemain.Deps
	// Plan is the gear plan to serve; required. Its pipeline must be
	// Config.Pipeline. The binary reads it from Config.Plan (LoadPlan), the
	// all-in-one binary hands over the plan it serves.
	Plan *plan.Plan
}

// ErrNoPlan means the controller was given no plan: no Deps.Plan, or no
// plan file (CASCADE_PLAN) for LoadPlan.
var ErrNoPlan = errors.New("no plan")

// LoadPlan reads the plan file the configuration names (Config.Plan, as
// the controller binary does), checks it with the configuration, and
// resolves its model files against the file's folder. The MNIST plan is
// models/mnist/plan.json in the repository.
func LoadPlan(cfg Config) (*plan.Plan, error) {
	if cfg.Plan == "" {
		return nil, fmt.Errorf("%w: set CASCADE_PLAN to a gear plan file (the MNIST plan is models/mnist/plan.json in the repository)", ErrNoPlan)
	}
	p, err := plan.LoadFile(cfg.Plan)
	if err != nil {
		return nil, err
	}
	return servedPlan(cfg, p)
}

// servedPlan checks that p is for the configured pipeline and returns the
// plan the controller serves: p, or a copy of it with the configuration's
// QueuePartitions. p itself is never changed.
func servedPlan(cfg Config, p *plan.Plan) (*plan.Plan, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: Deps.Plan is nil", ErrNoPlan)
	}
	if p.Pipeline != cfg.Pipeline {
		return nil, fmt.Errorf("plan is for pipeline %q, but CASCADE_PIPELINE is %q", p.Pipeline, cfg.Pipeline)
	}
	if cfg.QueuePartitions > 0 && cfg.QueuePartitions != p.Partitions {
		c := *p
		c.Partitions = cfg.QueuePartitions
		p = &c
	}
	return p, nil
}

// MetricsAddress is where the binary serves the metrics endpoint.
func (c Config) MetricsAddress() string { return c.MetricsAddr }
