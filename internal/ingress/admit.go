package ingress

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Canonicalize checks a request's input tensor against the pipeline's
// input and returns the tensor workers consume: its datatype, the item
// shape. It accepts
//   - datatype FP32, or UINT8 when in.UINT8Scale > 0 (the worker multiplies
//     it by the scale);
//   - the item shape, or the item shape with a leading batch axis of 1;
//   - exactly elements × datatype size bytes of data;
//   - for FP32, only finite values (no NaN or ±Inf).
//
// Errors are *wire.Error with wire.CodeInvalidInput. The result shares t's
// data.
func Canonicalize(t wire.Tensor, in plan.Input) (wire.Tensor, error) {
	switch t.Datatype {
	case wire.FP32:
	case wire.UINT8:
		if in.UINT8Scale <= 0 {
			return wire.Tensor{}, wire.Errorf(wire.CodeInvalidInput, "datatype UINT8 is not accepted by this pipeline (want FP32)")
		}
	default:
		accepted := "FP32"
		if in.UINT8Scale > 0 {
			accepted = "FP32 or UINT8"
		}
		return wire.Tensor{}, wire.Errorf(wire.CodeInvalidInput, "datatype %q is not accepted (want %s)", t.Datatype, accepted)
	}
	if !slices.Equal(t.Shape, in.Shape) && !(len(t.Shape) == len(in.Shape)+1 && t.Shape[0] == 1 && slices.Equal(t.Shape[1:], in.Shape)) {
		return wire.Tensor{}, wire.Errorf(wire.CodeInvalidInput, "shape %v does not match the item shape %v (a leading batch axis of 1 is allowed)", t.Shape, in.Shape)
	}
	n := in.Elements()
	size := wire.DatatypeSize(t.Datatype)
	if len(t.Data) != n*size {
		return wire.Tensor{}, wire.Errorf(wire.CodeInvalidInput, "data has %d bytes, shape %v of %s needs %d", len(t.Data), t.Shape, t.Datatype, n*size)
	}
	shape := slices.Clone(in.Shape)
	if t.Datatype == wire.FP32 {
		for i := 0; i < len(t.Data); i += 4 {
			// An all-ones exponent is Inf or NaN.
			if bits := binary.LittleEndian.Uint32(t.Data[i:]); bits&0x7f800000 == 0x7f800000 {
				return wire.Tensor{}, wire.Errorf(wire.CodeInvalidInput, "value %d is %v: FP32 inputs must be finite", i/4, math.Float32frombits(bits))
			}
		}
	}
	// UINT8 travels as it came, a quarter of the bytes of FP32; the worker
	// scales it by the plan's UINT8Scale when it builds the model's input.
	return wire.Tensor{Datatype: t.Datatype, Shape: shape, Data: t.Data}, nil
}

// Deadline returns the deadline of a request admitted at now: its
// deadline_unix_ms if set, else now + timeout_ms if set, else now +
// defaultTimeout; never later than now + maxTimeout. Negative values are
// invalid_input; a deadline already past is deadline_exceeded.
func Deadline(r *wire.Request, now time.Time, defaultTimeout, maxTimeout time.Duration) (time.Time, error) {
	latest := now.Add(maxTimeout)
	switch {
	case r.TimeoutMs < 0 || r.DeadlineUnixMs < 0:
		return time.Time{}, wire.Errorf(wire.CodeInvalidInput, "timeout_ms (%d) and deadline_unix_ms (%d) must not be negative", r.TimeoutMs, r.DeadlineUnixMs)
	case r.DeadlineUnixMs > 0:
		// Compare in milliseconds first: a huge value would overflow
		// time.UnixMilli's nanoseconds.
		if r.DeadlineUnixMs > latest.UnixMilli() {
			return latest, nil
		}
		d := time.UnixMilli(r.DeadlineUnixMs)
		if !d.After(now) {
			return time.Time{}, wire.Errorf(wire.CodeDeadlineExceeded, "deadline_unix_ms %d is already past", r.DeadlineUnixMs)
		}
		return d, nil
	case r.TimeoutMs > 0:
		if r.TimeoutMs > maxTimeout.Milliseconds() {
			return latest, nil
		}
		return now.Add(time.Duration(r.TimeoutMs) * time.Millisecond), nil
	}
	return now.Add(min(defaultTimeout, maxTimeout)), nil
}

// admission is one request to admit, with what its door knows about it.
type admission struct {
	door    string
	req     *wire.Request
	start   time.Time // when the request arrived
	replyTo string    // core NATS subject for the result; empty for jobs
	durable bool      // the result goes to the results stream
	// resultFormat is the encoding the workers give the result
	// (wire.Item.ResultFormat): JSON for jobs sent as JSON. Callers the
	// ingress answers itself leave it empty (msgpack, which it decodes).
	resultFormat string
	// direct is set when the workers answer the caller themselves (a
	// msgpack request-reply caller's own inbox); they then record its
	// end-to-end latency, as they do for durable jobs.
	direct bool
	// client overrides req.Client (jobs: the subject's last token).
	client string
	// key, when set, is the admission's key (wire.Item.Key) and the id of
	// a request that carries none. Jobs derive it from the job's stream
	// sequence, so a redelivered job is deduplicated at the first stage
	// while two jobs that carry the same id are two admissions, each with
	// its own result. Empty: a fresh NUID (an id is a correlation id,
	// never a key; idempotency is the Idempotency-Key header's).
	key string
}

// admitted describes a request published to its first stage.
type admitted struct {
	item *wire.Item
}

// admit validates a request against the current plan, builds the item and
// hands it to the envelope coalescer for the first model of the current
// gear, waiting for its envelope's PubAck. Errors are *wire.Error:
// invalid_input, deadline_exceeded, unavailable (not ready, NATS down),
// overloaded (the first queue is full) or internal.
func (in *ingress) admit(a admission) (admitted, error) {
	it, first, err := in.prepare(a)
	if err != nil {
		return admitted{}, err
	}
	if err := in.envelopes.add(it, first).wait(); err != nil {
		return admitted{item: it}, err
	}
	in.metrics.admission.WithLabelValues(a.door).Observe(in.now().Sub(a.start).Seconds())
	return admitted{item: it}, nil
}

// workerDoor is the door the workers record an item's end-to-end latency
// under: set when they answer its caller (directly, or on the results
// stream), empty when the ingress does.
func workerDoor(a admission) string {
	if a.direct || a.durable {
		return a.door
	}
	return ""
}

// prepare validates a request against the current plan and builds its item
// and the model it goes to first. Errors are *wire.Error: invalid_input,
// deadline_exceeded or unavailable (not ready).
func (in *ingress) prepare(a admission) (*wire.Item, string, error) {
	c := in.ctl.Load()
	if c == nil || !in.ready.Load() {
		return nil, "", wire.Errorf(wire.CodeUnavailable, "pipeline %q is not ready (waiting for the controller's plan and topology)", in.cfg.Pipeline)
	}
	r := a.req
	if a.replyTo != "" {
		if err := wire.CheckReplySubject(in.cfg.InboxPrefixes, a.replyTo); err != nil {
			return nil, "", wire.Errorf(wire.CodeInvalidInput, "%v", err)
		}
	}
	id := r.ID
	switch {
	case id != "" && !wire.ValidToken(id):
		return nil, "", wire.Errorf(wire.CodeInvalidInput, "id %q: want 1-64 letters, digits, '-' or '_'", truncate(id, 80))
	case id == "" && a.key != "":
		id = a.key
	case id == "":
		id = nuid.Next()
	}
	client := r.Client
	if a.client != "" {
		client = a.client
	}
	if client == "" {
		client = wire.DefaultClient
	}
	if !wire.ValidToken(client) {
		return nil, "", wire.Errorf(wire.CodeInvalidInput, "client %q: want 1-64 letters, digits, '-' or '_'", truncate(client, 80))
	}
	key := a.key
	if key == "" {
		// The id is the caller's correlation id, echoed in the result, not
		// a key: every admission gets its own.
		key = nuid.Next()
	}
	now := in.now()
	deadline, err := Deadline(r, now, in.cfg.DefaultTimeout, in.cfg.MaxTimeout)
	if err != nil {
		return nil, "", err
	}
	input, err := Canonicalize(r.Input, c.Plan.Input)
	if err != nil {
		return nil, "", err
	}
	return &wire.Item{
		ID:                  id,
		Key:                 key,
		Pipeline:            in.cfg.Pipeline,
		Client:              client,
		Input:               input,
		DeadlineUnixNano:    deadline.UnixNano(),
		ReturnProbabilities: r.WantsProbabilities(),
		ReplyTo:             a.replyTo,
		Door:                workerDoor(a),
		Durable:             a.durable,
		ResultFormat:        a.resultFormat,
		AdmittedGear:        c.Gear.ID,
		AdmittedUnixNano:    now.UnixNano(),
		EnqueuedUnixNano:    now.UnixNano(),
	}, firstModel(c), nil
}

// publishError maps a failed publish to the first stage to a typed error.
func publishError(err error, model string) error {
	switch {
	case natsbus.QueueFull(err):
		return wire.Errorf(wire.CodeOverloaded, "the queue of model %q is full; retry later", model)
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining):
		return wire.Errorf(wire.CodeUnavailable, "publish to model %q: %v", model, err)
	}
	return wire.Errorf(wire.CodeInternal, "publish to model %q: %v", model, err)
}

// truncate shortens s for error messages.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
