package ingress

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/envconfig"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/internal/telemetry"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Config configures an ingress instance. Every field is read from the
// environment variable named in its tag with the prefix CASCADE_ (see
// ConfigFromEnv).
type Config struct {
	// Process holds the settings every service reads alike: NATS URL,
	// pipeline, metrics endpoint protection, logging.
	servicemain.Process
	// MetricsAddr is where /metrics is served (CASCADE_METRICS_ADDR, default
	// :9092; used by the main). Set it to the empty string to serve nothing.
	MetricsAddr string `env:"METRICS_ADDR" envDefault:"127.0.0.1:9092"`

	// HTTPAddr is where the Open Inference Protocol v2 HTTP endpoint listens
	// (CASCADE_HTTP_ADDR, default :8080). Set it to the empty string to
	// serve no HTTP (Deps.HTTPListener, if set, is used instead).
	HTTPAddr string `env:"HTTP_ADDR" envDefault:"127.0.0.1:8080"`
	// HTTP protects the inference endpoint: CASCADE_HTTP_TLS_CERT and
	// CASCADE_HTTP_TLS_KEY serve HTTPS, CASCADE_HTTP_BEARER_TOKEN requires
	// "Authorization: Bearer <token>" on every request but the health
	// probes. All empty by default.
	HTTP telemetry.HTTPSecurity `envPrefix:"HTTP_"`
	// Instance names this ingress in its stats subject and reply inbox
	// (CASCADE_INGRESS_INSTANCE; a wire token). Empty: a random NUID.
	Instance string `env:"INGRESS_INSTANCE"`

	// InboxPrefixes are the prefixes of every reply subject the ingress
	// answers on (CASCADE_INBOX_PREFIX, comma-separated, default
	// "_INBOX.,_R_.": clients' inboxes, and the replies of requests that came
	// through a service import; the stage workers must use the same). A
	// request-reply message whose reply subject is not a literal subject
	// under one, or lies under a subject space the services own
	// (cascade.>, $KV.>, $JS.>, ...), is refused unread and counted; the
	// ingress's own results are received under the first prefix + instance.
	InboxPrefixes []string `env:"INBOX_PREFIX" envSeparator:"," envDefault:"_INBOX.,_R_."`
	// PendingMsgs and PendingBytes are the request subscription's pending
	// limits in the NATS client (CASCADE_INGRESS_PENDING_MSGS, default
	// 65536; CASCADE_INGRESS_PENDING_BYTES, default 256 MiB). Past half of
	// either, requests are answered overloaded without being read, so the
	// client library never reaches the limits and drops them unanswered.
	PendingMsgs  int `env:"INGRESS_PENDING_MSGS" envDefault:"65536"`
	PendingBytes int `env:"INGRESS_PENDING_BYTES" envDefault:"268435456"`

	// MaxBatchItems bounds the items of one batched request (an input of
	// shape [N, item shape...]; CASCADE_INGRESS_MAX_BATCH_ITEMS, default
	// 1024).
	MaxBatchItems int `env:"INGRESS_MAX_BATCH_ITEMS" envDefault:"1024"`
	// EnvelopeWait bounds how long an admitted item waits for others to
	// share its envelope (CASCADE_INGRESS_ENVELOPE_WAIT, default 500µs).
	// An envelope goes at once when no other is being stored, so a lone
	// request at an idle ingress never waits.
	EnvelopeWait time.Duration `env:"INGRESS_ENVELOPE_WAIT" envDefault:"500us"`
	// EnvelopeMaxItems caps the items of one envelope
	// (CASCADE_INGRESS_ENVELOPE_MAX_ITEMS, default 0: the first model's max
	// batch in the gear in force).
	EnvelopeMaxItems int `env:"INGRESS_ENVELOPE_MAX_ITEMS" envDefault:"0"`
	// EnvelopeMaxBytes caps an envelope's size
	// (CASCADE_INGRESS_ENVELOPE_MAX_BYTES, default 512 KiB; keep it under
	// the server's max_payload, 1 MiB by default).
	EnvelopeMaxBytes int `env:"INGRESS_ENVELOPE_MAX_BYTES" envDefault:"524288"`

	// DefaultTimeout is the deadline of a request that sets neither
	// timeout_ms nor deadline_unix_ms (CASCADE_DEFAULT_TIMEOUT, default 5s).
	DefaultTimeout time.Duration `env:"DEFAULT_TIMEOUT" envDefault:"5s"`
	// MaxTimeout caps every request's deadline at admission + MaxTimeout
	// (CASCADE_MAX_TIMEOUT, default 60s). Longer requests are capped, not
	// refused.
	MaxTimeout time.Duration `env:"MAX_TIMEOUT" envDefault:"60s"`
	// MaxBodyBytes is the largest request body accepted over HTTP and NATS
	// (CASCADE_INGRESS_MAX_BODY_BYTES, default 4 MiB); larger bodies are
	// answered invalid_input (HTTP 413).
	MaxBodyBytes int64 `env:"INGRESS_MAX_BODY_BYTES" envDefault:"4194304"`
	// MaxInFlight bounds the NATS request-reply requests this instance
	// handles at once (CASCADE_INGRESS_MAX_IN_FLIGHT, default 4096); beyond
	// it requests are answered overloaded.
	MaxInFlight int `env:"INGRESS_MAX_IN_FLIGHT" envDefault:"4096"`
	// ReplyGrace is how long past a request's deadline a waiting caller
	// (HTTP, JSON over NATS) waits for its result before it is answered
	// deadline_exceeded (CASCADE_INGRESS_REPLY_GRACE, default 1s). Workers
	// answer by the deadline; the grace covers the result's trip back.
	ReplyGrace time.Duration `env:"INGRESS_REPLY_GRACE" envDefault:"1s"`
	// PublishTimeout bounds the wait for the PubAck of one admission
	// (CASCADE_INGRESS_PUBLISH_TIMEOUT, default 5s); a timeout is answered
	// unavailable.
	PublishTimeout time.Duration `env:"INGRESS_PUBLISH_TIMEOUT" envDefault:"5s"`
	// StatsInterval is how often the cumulative admission counters are
	// published on wire.StatsSubject (CASCADE_INGRESS_STATS_INTERVAL,
	// default 100ms).
	StatsInterval time.Duration `env:"INGRESS_STATS_INTERVAL" envDefault:"100ms"`
	// JobsBatch is how many durable jobs one pull fetches
	// (CASCADE_INGRESS_JOBS_BATCH, default 64); 0 disables the jobs door.
	JobsBatch int `env:"INGRESS_JOBS_BATCH" envDefault:"64"`
	// JobsMaxWait is how long one pull waits for jobs
	// (CASCADE_INGRESS_JOBS_MAX_WAIT, default 500ms). It bounds shutdown
	// time, never a job's wait.
	JobsMaxWait time.Duration `env:"INGRESS_JOBS_MAX_WAIT" envDefault:"500ms"`
	// JobsRetryDelay is the first redelivery delay of a job that could not
	// be routed because the first stage's queue was full or NATS was
	// unavailable (CASCADE_INGRESS_JOBS_RETRY_DELAY, default 1s); it doubles
	// with every delivery, up to 30s.
	JobsRetryDelay time.Duration `env:"INGRESS_JOBS_RETRY_DELAY" envDefault:"1s"`
	// ShutdownTimeout bounds how long shutdown waits for in-flight requests
	// (CASCADE_INGRESS_SHUTDOWN_TIMEOUT, default 10s); those still waiting
	// are then answered unavailable.
	ShutdownTimeout time.Duration `env:"INGRESS_SHUTDOWN_TIMEOUT" envDefault:"10s"`
	// PollInterval is how often the ingress looks for the control bucket and
	// the topology while it waits for them (CASCADE_INGRESS_POLL_INTERVAL,
	// default 250ms).
	PollInterval time.Duration `env:"INGRESS_POLL_INTERVAL" envDefault:"250ms"`
}

// ConfigFromEnv reads a Config from environ (keys with the CASCADE_ prefix;
// the process environment in main, a map in tests) and validates it. An
// explicitly empty CASCADE_METRICS_ADDR or CASCADE_HTTP_ADDR disables that
// server.
func ConfigFromEnv(environ map[string]string) (Config, error) {
	var cfg Config
	off := map[string]*string{"CASCADE_METRICS_ADDR": &cfg.MetricsAddr, "CASCADE_HTTP_ADDR": &cfg.HTTPAddr}
	if err := envconfig.Parse(&cfg, environ, off); err != nil {
		return Config{}, fmt.Errorf("ingress config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// ErrInvalidConfig marks a configuration that fails Validate.
var ErrInvalidConfig = errors.New("invalid ingress config")

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	problems := servicemain.Problems{c.Process.Validate()}
	problems.Add(c.HTTP.Validate("CASCADE_HTTP_"))
	problems.If(c.Instance != "" && !wire.ValidToken(c.Instance), "CASCADE_INGRESS_INSTANCE %q: want 1-64 letters, digits, '-' or '_'", c.Instance)
	err := wire.CheckInboxPrefixes(c.InboxPrefixes)
	problems.If(err != nil, "CASCADE_INBOX_PREFIX: %v", err)
	problems.If(c.MaxBatchItems < 1 || c.MaxBatchItems > 65536, "CASCADE_INGRESS_MAX_BATCH_ITEMS must be in [1,65536], got %d", c.MaxBatchItems)
	problems.If(c.EnvelopeWait < 0 || c.EnvelopeWait > time.Second, "CASCADE_INGRESS_ENVELOPE_WAIT must be in [0,1s], got %v", c.EnvelopeWait)
	problems.If(c.EnvelopeMaxItems < 0 || c.EnvelopeMaxItems > 4096, "CASCADE_INGRESS_ENVELOPE_MAX_ITEMS must be in [0,4096], got %d", c.EnvelopeMaxItems)
	problems.If(c.EnvelopeMaxBytes < 4<<10 || c.EnvelopeMaxBytes > 64<<20, "CASCADE_INGRESS_ENVELOPE_MAX_BYTES must be in [4KiB,64MiB], got %d", c.EnvelopeMaxBytes)
	problems.If(c.PendingMsgs < 16, "CASCADE_INGRESS_PENDING_MSGS must be >= 16, got %d", c.PendingMsgs)
	problems.If(int64(c.PendingBytes) < 2*c.MaxBodyBytes, "CASCADE_INGRESS_PENDING_BYTES (%d) must be at least twice CASCADE_INGRESS_MAX_BODY_BYTES (%d)", c.PendingBytes, c.MaxBodyBytes)
	problems.If(c.DefaultTimeout <= 0, "CASCADE_DEFAULT_TIMEOUT must be > 0, got %v", c.DefaultTimeout)
	problems.If(c.MaxTimeout < c.DefaultTimeout, "CASCADE_MAX_TIMEOUT (%v) must be >= CASCADE_DEFAULT_TIMEOUT (%v)", c.MaxTimeout, c.DefaultTimeout)
	problems.If(c.MaxTimeout > 24*time.Hour, "CASCADE_MAX_TIMEOUT must be at most 24h, got %v", c.MaxTimeout)
	problems.If(c.MaxBodyBytes < 1<<10 || c.MaxBodyBytes > 64<<20, "CASCADE_INGRESS_MAX_BODY_BYTES must be in [1KiB,64MiB], got %d", c.MaxBodyBytes)
	problems.If(c.MaxInFlight < 1, "CASCADE_INGRESS_MAX_IN_FLIGHT must be >= 1, got %d", c.MaxInFlight)
	problems.If(c.ReplyGrace < 0, "CASCADE_INGRESS_REPLY_GRACE must be >= 0, got %v", c.ReplyGrace)
	problems.If(c.PublishTimeout <= 0, "CASCADE_INGRESS_PUBLISH_TIMEOUT must be > 0, got %v", c.PublishTimeout)
	problems.If(c.StatsInterval < time.Millisecond, "CASCADE_INGRESS_STATS_INTERVAL must be >= 1ms, got %v", c.StatsInterval)
	problems.If(c.JobsBatch < 0 || c.JobsBatch > 4096, "CASCADE_INGRESS_JOBS_BATCH must be in [0,4096], got %d", c.JobsBatch)
	problems.If(c.JobsMaxWait < time.Millisecond || c.JobsMaxWait > time.Minute, "CASCADE_INGRESS_JOBS_MAX_WAIT must be in [1ms,1m], got %v", c.JobsMaxWait)
	problems.If(c.JobsRetryDelay <= 0, "CASCADE_INGRESS_JOBS_RETRY_DELAY must be > 0, got %v", c.JobsRetryDelay)
	problems.If(c.ShutdownTimeout < 0, "CASCADE_INGRESS_SHUTDOWN_TIMEOUT must be >= 0, got %v", c.ShutdownTimeout)
	problems.If(c.PollInterval < time.Millisecond, "CASCADE_INGRESS_POLL_INTERVAL must be >= 1ms, got %v", c.PollInterval)
	return problems.Err(ErrInvalidConfig)
}

// Deps are what Run needs from its process.
type Deps struct {
	// Deps are the logger, metrics registerer, NATS connection and clock
	// every service takes.
	servicemain.Deps
	// HTTPListener, if set, serves the HTTP endpoint instead of listening on
	// Config.HTTPAddr (tests listen on 127.0.0.1:0). Run closes it.
	HTTPListener net.Listener
}

// MetricsAddress is where the binary serves the metrics endpoint.
func (c Config) MetricsAddress() string { return c.MetricsAddr }
