package ingress

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/cascadeserve/cascadeserve/internal/wire"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// Canonicalize checks a request's input tensor against the pipeline's
// input and returns the canonical tensor workers consume: FP32 with the
// item shape. It accepts
//   - datatype FP32, or UINT8 when in.UINT8Scale > 0 (converted to FP32 and
//     multiplied by the scale);
//   - the item shape, or the item shape with a leading batch axis of 1;
//   - exactly elements × datatype size bytes of data;
//   - for FP32, only finite values (no NaN or ±Inf).
//
// Errors are *wire.Error with wire.CodeInvalidInput. The FP32 result may
// share t's data.
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
		return wire.Tensor{Datatype: wire.FP32, Shape: shape, Data: t.Data}, nil
	}
	// 256 possible values: scale each once, then look them up.
	var table [256]uint32
	scale := float32(in.UINT8Scale)
	for v := range table {
		table[v] = math.Float32bits(float32(v) * scale)
	}
	data := make([]byte, 4*n)
	for i, b := range t.Data {
		binary.LittleEndian.PutUint32(data[4*i:], table[b])
	}
	return wire.Tensor{Datatype: wire.FP32, Shape: shape, Data: data}, nil
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
	// client overrides req.Client (jobs: the subject's last token).
	client string
	// key, when set, is the admission's key (wire.Item.Key) and the id of
	// a request that carries none. Jobs derive it from the job's stream
	// sequence, so a redelivered job is deduplicated at the first stage
	// while two jobs that carry the same id are two admissions, each with
	// its own result. Empty: a request with an id is keyed by client and
	// id (its idempotency key on the synchronous doors), one without by a
	// fresh NUID.
	key string
}

// admitted describes a request published to its first stage.
type admitted struct {
	item *wire.Item
}

// admit validates a request against the current plan, builds the item and
// publishes it to the first model of the current gear, awaiting the PubAck.
// Errors are *wire.Error: invalid_input, deadline_exceeded, unavailable
// (not ready, NATS down), overloaded (the first queue is full), duplicate
// (the id was admitted within the dedup window) or internal.
func (in *ingress) admit(a admission) (admitted, error) {
	c := in.ctl.Load()
	if c == nil || !in.ready.Load() {
		return admitted{}, wire.Errorf(wire.CodeUnavailable, "pipeline %q is not ready (waiting for the controller's plan and topology)", in.cfg.Pipeline)
	}
	r := a.req
	if a.replyTo != "" {
		if err := wire.CheckReplySubject(in.cfg.InboxPrefix, a.replyTo); err != nil {
			return admitted{}, wire.Errorf(wire.CodeInvalidInput, "%v", err)
		}
	}
	id := r.ID
	switch {
	case id != "" && !wire.ValidToken(id):
		return admitted{}, wire.Errorf(wire.CodeInvalidInput, "id %q: want 1-64 letters, digits, '-' or '_'", truncate(id, 80))
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
		return admitted{}, wire.Errorf(wire.CodeInvalidInput, "client %q: want 1-64 letters, digits, '-' or '_'", truncate(client, 80))
	}
	key := a.key
	switch {
	case key != "":
	case r.ID != "":
		key = client + "." + r.ID
	default:
		key = id
	}
	now := in.now()
	deadline, err := Deadline(r, now, in.cfg.DefaultTimeout, in.cfg.MaxTimeout)
	if err != nil {
		return admitted{}, err
	}
	input, err := Canonicalize(r.Input, c.Plan.Input)
	if err != nil {
		return admitted{}, err
	}
	first := firstModel(c)
	it := &wire.Item{
		ID:                  id,
		Key:                 key,
		Pipeline:            in.cfg.Pipeline,
		Client:              client,
		Input:               input,
		DeadlineUnixNano:    deadline.UnixNano(),
		ReturnProbabilities: r.ReturnProbabilities,
		ReplyTo:             a.replyTo,
		Durable:             a.durable,
		ResultFormat:        a.resultFormat,
		AdmittedGear:        c.Gear.ID,
		AdmittedUnixNano:    now.UnixNano(),
		EnqueuedUnixNano:    now.UnixNano(),
	}
	body, err := in.codec.EncodeItem(it)
	if err != nil {
		return admitted{}, wire.Errorf(wire.CodeInternal, "encode item %s: %v", id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.PublishTimeout)
	defer cancel()
	msg := &nats.Msg{Subject: wire.ModelSubject(in.cfg.Pipeline, first), Data: body}
	ack, err := in.js.PublishMsg(ctx, msg,
		jetstream.WithMsgID(wire.StageMsgID(key, first)),
		jetstream.WithExpectStream(wire.ModelStream(in.cfg.Pipeline, first)))
	if err != nil {
		return admitted{}, publishError(err, first)
	}
	if ack.Duplicate {
		return admitted{item: it}, wire.Errorf(wire.CodeDuplicate, "id %q was already admitted within the deduplication window; its result goes to that request", id)
	}
	in.metrics.admission.WithLabelValues(a.door).Observe(in.now().Sub(a.start).Seconds())
	return admitted{item: it}, nil
}

// publishError maps a failed publish to the first stage to a typed error.
func publishError(err error, model string) error {
	switch {
	case queueFull(err):
		return wire.Errorf(wire.CodeOverloaded, "the queue of model %q is full; retry later", model)
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining):
		return wire.Errorf(wire.CodeUnavailable, "publish to model %q: %v", model, err)
	}
	return wire.Errorf(wire.CodeInternal, "publish to model %q: %v", model, err)
}

// queueFull reports whether err is JetStream rejecting a publish because
// the stream is full: with DiscardNew at MaxMsgs or MaxBytes the server
// answers JSStreamStoreFailedF (10077) with the store error "maximum
// messages exceeded" or "maximum bytes exceeded" as description. nats.go
// v1.55 has no sentinel for it; the error is a *jetstream.APIError.
func queueFull(err error) bool {
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		return false
	}
	return api.ErrorCode == jsErrStoreFailed && strings.Contains(api.Description, "maximum")
}

// jsErrStoreFailed is the JetStream error code of a failed store.
const jsErrStoreFailed jetstream.ErrorCode = 10077

// truncate shortens s for error messages.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
