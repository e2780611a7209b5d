package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Header keys.
const (
	// HeaderContentType selects the body encoding of requests:
	// "application/json" for the Open Inference Protocol v2 JSON body,
	// anything else (or absent) for msgpack.
	HeaderContentType  = "Content-Type"
	ContentTypeJSON    = "application/json"
	ContentTypeMsgpack = "application/msgpack"
	// HeaderMsgID is JetStream's deduplication header.
	HeaderMsgID = "Nats-Msg-Id"
	// HeaderExpectedStream makes JetStream refuse a publish that another
	// stream would store.
	HeaderExpectedStream = "Nats-Expected-Stream"
	// HeaderResultBatch marks a reply that carries the results of several
	// items of one batched request (their count): a Result whose Items
	// hold them, each with its Index.
	HeaderResultBatch = "Cascade-Result-Batch"
	// HeaderError carries the error code on an error reply.
	HeaderError = "Cascade-Error"
	// HeaderIdempotencyKey (HTTP and NATS request-reply) makes a request
	// idempotent for its client: a repeat with the same key within the
	// idempotency window is answered with the first request's result
	// instead of being admitted again (see IdempotencyBucket).
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderIdempotentReplayed is set ("true") on the answer to a repeat of
	// an idempotent request: the result is the first request's.
	HeaderIdempotentReplayed = "Idempotent-Replayed"
	// HeaderInferenceHeaderContentLength is the Open Inference Protocol's
	// binary tensor data extension: the body's first n bytes are the JSON
	// header, the rest the raw tensor bytes of inputs (and, in a response,
	// outputs) whose parameters carry binary_data_size.
	HeaderInferenceHeaderContentLength = "Inference-Header-Content-Length"
	// ContentTypeOctetStream is the Content-Type of a response with binary
	// tensor data.
	ContentTypeOctetStream = "application/octet-stream"
)

// Subjects and names. Every name is derived here and nowhere else.

// InferSubject is where request-reply producers send (core NATS, queue group
// IngressQueue).
func InferSubject(pipeline string) string { return "cascade." + pipeline + ".infer" }

// IngressQueue is the queue group of ingress instances on InferSubject.
const IngressQueue = "ingress"

// JobsSubject is where durable-job producers publish (JetStream).
func JobsSubject(pipeline, client string) string {
	return "cascade." + pipeline + ".jobs." + client
}

// JobsStream is the stream holding accepted jobs until an ingress routes them.
func JobsStream(pipeline string) string { return "CASCADE_" + upper(pipeline) + "_JOBS" }

// JobsConsumer is the durable consumer ingress instances share on JobsStream.
const JobsConsumer = "ingress"

// ModelSubject is the work queue subject of one model of a pipeline.
func ModelSubject(pipeline, model string) string {
	return "cascade." + pipeline + ".model." + model
}

// ModelStream is the work-queue stream of one model.
func ModelStream(pipeline, model string) string {
	return "CASCADE_" + upper(pipeline) + "_" + upper(model)
}

// ModelPartitionSubject is the subject of partition part of a model's
// queue split into partitions: ModelSubject with one partition, else
// ModelSubject + ".p<part>".
func ModelPartitionSubject(pipeline, model string, part, partitions int) string {
	if partitions <= 1 {
		return ModelSubject(pipeline, model)
	}
	return ModelSubject(pipeline, model) + ".p" + strconv.Itoa(part)
}

// ModelPartitionStream is the stream of partition part of a model's queue:
// ModelStream with one partition, else ModelStream + "__P<part>" (so a
// model name must not contain "__").
func ModelPartitionStream(pipeline, model string, part, partitions int) string {
	if partitions <= 1 {
		return ModelStream(pipeline, model)
	}
	return ModelStream(pipeline, model) + "__P" + strconv.Itoa(part)
}

// ModelConsumer is the durable pull consumer of a model's stream, shared by
// every worker replica that serves the model (and what KEDA watches).
func ModelConsumer(model string) string { return model }

// ResultSubject is where results of durable jobs go.
func ResultSubject(pipeline, client string) string {
	return "cascade." + pipeline + ".result." + client
}

// ResultsStream holds results of all pipelines, bounded by age.
const ResultsStream = "CASCADE_RESULTS"

// ResultsWildcard matches every result subject.
const ResultsWildcard = "cascade.*.result.>"

// DLQSubject receives items a model failed on MaxDeliver times.
func DLQSubject(pipeline, model string) string {
	return "cascade." + pipeline + ".dlq." + model
}

// DLQStream holds a pipeline's dead letters.
func DLQStream(pipeline string) string { return "CASCADE_" + upper(pipeline) + "_DLQ" }

// KVBucket is the control bucket of a pipeline, holding KeyPlan and KeyGear.
func KVBucket(pipeline string) string { return "cascade_" + pipeline }

// IdempotencyBucket holds a pipeline's idempotency records: one key per
// client and Idempotency-Key (IdempotencyRecordKey), pointing at the first
// admission with that key and then holding its result. Its TTL is the
// idempotency window; the controller creates it with the topology.
func IdempotencyBucket(pipeline string) string { return "cascade_" + pipeline + "_idem" }

// MaxIdempotencyKey is the longest Idempotency-Key accepted, in bytes.
const MaxIdempotencyKey = 255

// ValidIdempotencyKey reports whether s can be an Idempotency-Key: 1 to
// MaxIdempotencyKey bytes of visible ASCII (0x21-0x7e).
func ValidIdempotencyKey(s string) bool {
	if len(s) == 0 || len(s) > MaxIdempotencyKey {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// IdempotencyRecordKey is the key of a client's Idempotency-Key in
// IdempotencyBucket: `<client>.<first 32 hex digits of SHA-256(key)>`, so
// any key the header carries makes a valid, fixed-size KV key of two
// tokens.
func IdempotencyRecordKey(client, key string) string {
	sum := sha256.Sum256([]byte(key))
	return client + "." + hex.EncodeToString(sum[:16])
}

// Keys of the control bucket.
const (
	KeyPlan = "plan"
	KeyGear = "gear"
)

// DefaultClient is the client token when a request names none.
const DefaultClient = "default"

// ValidToken reports whether s can be a subject token (client tokens, ids in
// headers): 1-64 characters of letters, digits, '-' and '_'.
func ValidToken(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) < 0
}

// MaxNameLen is the longest pipeline, model or gear name (ValidName).
const MaxNameLen = 32

// ValidName reports whether s can name a pipeline, a model, a gear or an
// execution provider: 1-MaxNameLen characters of a-z, 0-9, '-' and '_'.
// Such a name is a subject token as it is, and stays distinct when the
// stream names upper-case it and turn '-' into '_' (pkg/plan validates
// every name of a plan with it). Client tokens and ids follow the looser
// ValidToken.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) < 0
}

func upper(s string) string {
	return strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
}

// StatsSubject is where each ingress instance publishes its cumulative
// admission counters (several times a second, never per request); the
// controller derives the intake rate from them.
func StatsSubject(pipeline, instance string) string {
	return "cascade." + pipeline + ".stats.ingress." + instance
}

// StatsWildcard matches every ingress's stats subject of a pipeline.
func StatsWildcard(pipeline string) string { return "cascade." + pipeline + ".stats.ingress.*" }

// IngressStats is the body (JSON) published on StatsSubject.
type IngressStats struct {
	Instance string `json:"instance"`
	// Admitted counts requests published to a first stage since the
	// instance started; Rejected counts typed-error answers at intake.
	Admitted uint64 `json:"admitted"`
	Rejected uint64 `json:"rejected"`
	// Envelopes counts the envelopes published to first stages and
	// EnvelopeItems the items in them, since the instance started: their
	// ratio is what one message of a first stage's queue holds, which the
	// controller needs to read the queue's backlog in items.
	Envelopes     uint64 `json:"envelopes,omitempty"`
	EnvelopeItems uint64 `json:"envelope_items,omitempty"`
	AtUnixNano    int64  `json:"at_ns"`
}

// DefaultInboxPrefix is the prefix of the clients' inboxes: the services
// answer only on inbox subjects, never on subjects they own.
const DefaultInboxPrefix = "_INBOX."

// ServiceImportReplyPrefix is the prefix nats-server gives the reply
// subject of a request that reached this account through a service import
// (a producer account importing the intake): an inbox too.
const ServiceImportReplyPrefix = "_R_."

// DefaultInboxPrefixes are the reply prefixes the services accept unless a
// deployment configures others (CASCADE_INBOX_PREFIX).
var DefaultInboxPrefixes = []string{DefaultInboxPrefix, ServiceImportReplyPrefix}

// ErrReplySubject marks a reply subject the services refuse to answer on.
var ErrReplySubject = errors.New("reply subject refused")

// ownedPrefixes are the subject spaces the services and the server own. No
// reply is ever published under them, whatever the inbox prefix says.
var ownedPrefixes = []string{"cascade.", "$KV.", "$JS.", "$SYS.", "$O.", "$NRG.", "$MQTT."}

// CheckInboxPrefix validates a configured inbox prefix: literal subject
// tokens ending in '.', outside every subject space the services own.
func CheckInboxPrefix(prefix string) error {
	if prefix == "" || !strings.HasSuffix(prefix, ".") || len(prefix) > 128 {
		return fmt.Errorf("inbox prefix %q: want literal subject tokens ending in '.', like %q", prefix, DefaultInboxPrefix)
	}
	if err := checkTokens(strings.TrimSuffix(prefix, ".")); err != nil {
		return fmt.Errorf("inbox prefix %q: %w", prefix, err)
	}
	for _, owned := range ownedPrefixes {
		if strings.HasPrefix(prefix, owned) || strings.HasPrefix(owned, prefix) {
			return fmt.Errorf("inbox prefix %q overlaps %q, which the services own", prefix, owned+">")
		}
	}
	return nil
}

// CheckReplySubject reports whether the services may answer on subject: a
// literal subject (no wildcards, no empty tokens or white space) of at most
// 256 bytes under one of prefixes (inbox prefixes that passed
// CheckInboxPrefix), with at least one token after it. Errors wrap
// ErrReplySubject.
func CheckReplySubject(prefixes []string, subject string) error {
	if len(subject) > 256 {
		return fmt.Errorf("%w: %d bytes, the limit is 256", ErrReplySubject, len(subject))
	}
	under := false
	for _, p := range prefixes {
		if strings.HasPrefix(subject, p) && len(subject) > len(p) {
			under = true
			break
		}
	}
	if !under {
		return fmt.Errorf("%w: %q is not an inbox under %s", ErrReplySubject, truncateName(subject), strings.Join(prefixes, " or "))
	}
	if err := checkTokens(subject); err != nil {
		return fmt.Errorf("%w: %q: %v", ErrReplySubject, truncateName(subject), err)
	}
	for _, owned := range ownedPrefixes {
		if strings.HasPrefix(subject, owned) {
			return fmt.Errorf("%w: %q is under %q", ErrReplySubject, truncateName(subject), owned+">")
		}
	}
	return nil
}

// CheckInboxPrefixes validates a configured list of inbox prefixes: at
// least one, each passing CheckInboxPrefix.
func CheckInboxPrefixes(prefixes []string) error {
	if len(prefixes) == 0 {
		return errors.New("no inbox prefix")
	}
	for _, p := range prefixes {
		if err := CheckInboxPrefix(p); err != nil {
			return err
		}
	}
	return nil
}

// checkTokens accepts a literal subject: non-empty '.'-separated tokens of
// printable characters other than white space, '*' and '>'.
func checkTokens(s string) error {
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" {
			return errors.New("empty token")
		}
		for _, r := range tok {
			if r <= ' ' || r == 0x7f || r == '*' || r == '>' {
				return fmt.Errorf("token %q holds a wildcard, white space or a control character", tok)
			}
		}
	}
	return nil
}

func truncateName(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
