// Package wire is CascadeServe's message contract: the request a producer
// sends, the in-flight item that travels between stages, the result a
// consumer reads, the typed error codes, the header keys and the subject and
// stream names. It imports no NATS client, so producers can depend on it
// alone.
//
// Messages are msgpack (github.com/vmihailenco/msgpack/v5) with named fields.
// Tensors travel as raw little-endian bytes with a datatype and a shape,
// never as []float32 (reflection over float slices is ~300× slower). Every
// message carries a format version V; decoders reject versions they do not
// know with ErrVersion.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"unsafe"
)

// Version is the wire format version this build writes.
const Version = 1

// Datatypes, named as in the Open Inference Protocol.
const (
	FP32  = "FP32"
	UINT8 = "UINT8"
)

// Code is a stable error code carried in results. Clients branch on it.
type Code string

// Error codes.
const (
	// CodeInvalidInput: the request was malformed or did not match the
	// pipeline's input (datatype, shape, size). Not retryable.
	CodeInvalidInput Code = "invalid_input"
	// CodeOverloaded: the first stage's queue is full. Retry later (HTTP 429).
	CodeOverloaded Code = "overloaded"
	// CodeDeadlineExceeded: the request's deadline passed before an answer.
	CodeDeadlineExceeded Code = "deadline_exceeded"
	// CodeUnavailable: the pipeline is not ready (topology or plan missing).
	CodeUnavailable Code = "unavailable"
	// CodeDuplicate: the request repeats an Idempotency-Key of its client
	// within the idempotency window, and the first request's result cannot
	// be had: it was still in flight at this request's deadline, or it
	// could not be kept. A repeat whose first result is known is answered
	// with that result instead (HTTP 409).
	CodeDuplicate Code = "duplicate"
	// CodeInternal: a server-side failure, e.g. a model failed repeatedly and
	// the item went to the dead-letter subject.
	CodeInternal Code = "internal"
)

// Error is a typed error as carried in a Result.
type Error struct {
	Code    Code   `msgpack:"code" json:"code"`
	Message string `msgpack:"message" json:"message"`
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Errorf builds an *Error.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of err if it is (or wraps) an *Error, else
// CodeInternal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrVersion marks a message written in a format version this build does
// not read.
var ErrVersion = errors.New("unsupported wire version")

// Tensor is a dense tensor: raw little-endian bytes with datatype and shape.
type Tensor struct {
	Datatype string  `msgpack:"datatype"`
	Shape    []int64 `msgpack:"shape"`
	Data     []byte  `msgpack:"data"`
}

// Elements returns the product of the shape, or -1 if a dimension is
// negative or the product overflows.
func (t Tensor) Elements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		if d < 0 || (d > 0 && n > math.MaxInt32/d) {
			return -1
		}
		n *= d
	}
	return n
}

// DatatypeSize returns the byte size of one element, or 0 if unknown.
func DatatypeSize(dt string) int {
	switch dt {
	case FP32:
		return 4
	case UINT8:
		return 1
	}
	return 0
}

// FP32Tensor builds an FP32 tensor from values (copied).
func FP32Tensor(shape []int64, values []float32) Tensor {
	b := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return Tensor{Datatype: FP32, Shape: shape, Data: b}
}

// AppendFloat32s decodes the tensor's values as float32 and appends them to
// dst. UINT8 values are multiplied by uint8Scale. It does not validate the
// shape; callers validate first.
func (t Tensor) AppendFloat32s(dst []float32, uint8Scale float32) ([]float32, error) {
	switch t.Datatype {
	case FP32:
		if len(t.Data)%4 != 0 {
			return dst, fmt.Errorf("FP32 data has %d bytes, not a multiple of 4", len(t.Data))
		}
		n := len(t.Data) / 4
		// Reinterpret in place only when the bytes are 4-aligned: a
		// misaligned *float32 is undefined (and trips checkptr under -race)
		// when Data is a sub-slice of a larger buffer.
		if p := unsafe.Pointer(unsafe.SliceData(t.Data)); nativeLittleEndian && n > 0 && uintptr(p)%4 == 0 {
			return append(dst, unsafe.Slice((*float32)(p), n)...), nil
		}
		for i := range n {
			dst = append(dst, math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:])))
		}
		return dst, nil
	case UINT8:
		for _, b := range t.Data {
			dst = append(dst, float32(b)*uint8Scale)
		}
		return dst, nil
	}
	return dst, fmt.Errorf("unsupported datatype %q", t.Datatype)
}

var nativeLittleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// Request is what a producer sends: over core NATS request-reply to
// InferSubject, as a durable job to JobsSubject, or (as JSON) over HTTP.
type Request struct {
	V int `msgpack:"v"`
	// ID, when set, is a correlation id echoed in the result, as in the
	// Open Inference Protocol; the same id twice is two requests (for
	// idempotency, send the header HeaderIdempotencyKey). Empty: ingress
	// assigns one.
	ID string `msgpack:"id,omitempty"`
	// Input is one item (shape = the pipeline's item shape, optionally with a
	// leading batch axis of 1) or a batch of N items (shape [N, item
	// shape...]), each cascaded on its own and answered in one Result with
	// Items in input order.
	Input Tensor `msgpack:"input"`
	// TimeoutMs bounds the time from admission to result. 0: the ingress
	// default. DeadlineUnixMs, if set, wins.
	TimeoutMs      int64 `msgpack:"timeout_ms,omitempty"`
	DeadlineUnixMs int64 `msgpack:"deadline_unix_ms,omitempty"`
	// Client is the results-subject token for jobs and async consumers
	// (default "default").
	Client string `msgpack:"client,omitempty"`
	// ReturnProbabilities asks for the answering model's class
	// probabilities in the result.
	ReturnProbabilities bool `msgpack:"return_probabilities,omitempty"`
	// Outputs names the outputs wanted (OutputLabel, OutputConfidence,
	// OutputProbabilities; CheckOutputs); empty: label and confidence, and
	// probabilities when ReturnProbabilities is set. Asking for
	// probabilities implies ReturnProbabilities. JSON answers hold only
	// the outputs named, in the order named.
	Outputs []string `msgpack:"outputs,omitempty"`
}

// CheckOutputs checks requested output names: each one of OutputLabel,
// OutputConfidence and OutputProbabilities, none twice. Errors are *Error
// with CodeInvalidInput.
func CheckOutputs(names []string) error {
	seen := map[string]bool{}
	for _, n := range names {
		switch n {
		case OutputLabel, OutputConfidence, OutputProbabilities:
		default:
			return Errorf(CodeInvalidInput, "unknown output %q (want %s, %s or %s)", truncate([]byte(n), 64), OutputLabel, OutputConfidence, OutputProbabilities)
		}
		if seen[n] {
			return Errorf(CodeInvalidInput, "output %q requested twice", n)
		}
		seen[n] = true
	}
	return nil
}

// WantsProbabilities reports whether r asks for the class probabilities:
// ReturnProbabilities, or OutputProbabilities among its outputs.
func (r *Request) WantsProbabilities() bool {
	return r.ReturnProbabilities || slices.Contains(r.Outputs, OutputProbabilities)
}

// Visit records one stage an item went through.
type Visit struct {
	Model      string  `msgpack:"model" json:"model"`
	Gear       string  `msgpack:"gear" json:"gear"`
	Confidence float64 `msgpack:"confidence" json:"confidence"`
	Label      int     `msgpack:"label" json:"label"`
	// QueueNs is the time from enqueue to the start of the batch's compute.
	QueueNs int64 `msgpack:"queue_ns" json:"queue_ns"`
	// ComputeNs is the compute time of the batch the item was in.
	ComputeNs int64 `msgpack:"compute_ns" json:"compute_ns"`
	BatchSize int   `msgpack:"batch_size" json:"batch_size"`
}

// Item is a request in flight between stages.
type Item struct {
	V int `msgpack:"v"`
	// ID is the request's id, echoed in its result.
	ID string `msgpack:"id"`
	// Key identifies the admission: every deduplication id of the item
	// (first stage, escalations, result, dead letter) derives from it, so
	// two admissions that carry the same ID never collide (see DedupKey).
	Key      string `msgpack:"key,omitempty"`
	Pipeline string `msgpack:"pipeline"`
	Client   string `msgpack:"client"`
	// Input is the canonical input: FP32, the pipeline's item shape.
	Input               Tensor `msgpack:"input"`
	DeadlineUnixNano    int64  `msgpack:"deadline_ns"`
	ReturnProbabilities bool   `msgpack:"return_probabilities,omitempty"`
	// ReplyTo is the core NATS subject the result is also published to
	// (request-reply and HTTP callers); empty for durable jobs.
	ReplyTo string `msgpack:"reply_to,omitempty"`
	// Durable asks for the result on the results stream (jobs).
	Durable bool `msgpack:"durable,omitempty"`
	// BatchIndex, when ReplyBatched, is the item's position in its batched
	// request. Every item of the batch has the same ReplyTo; the workers
	// send the results for one reply subject together, as one Result whose
	// Items carry their BatchIndex, instead of a message per item.
	ReplyBatched bool `msgpack:"reply_batched,omitempty"`
	BatchIndex   int  `msgpack:"batch_index,omitempty"`
	// ResultFormat is the encoding of the item's results, wherever they
	// go (Codec.EncodeResultAs): ResultFormatMsgpack (empty, a msgpack
	// Result) or ResultFormatJSON (the OIP v2 JSON response body). The
	// ingress sets JSON for durable jobs sent as JSON, so a human reading
	// the results stream reads JSON; the result's Content-Type header says
	// which.
	ResultFormat     string `msgpack:"result_format,omitempty"`
	AdmittedGear     string `msgpack:"admitted_gear"`
	AdmittedUnixNano int64  `msgpack:"admitted_ns"`
	EnqueuedUnixNano int64  `msgpack:"enqueued_ns"`
	// Visits lists the stages already run, in order.
	Visits []Visit `msgpack:"visits,omitempty"`
	// Door, when set, names the intake door of a request whose caller the
	// workers answer directly (msgpack request-reply "nats", durable
	// "jobs"), so they record its end-to-end latency; empty when the
	// ingress answers the caller itself (and records it).
	Door string `msgpack:"door,omitempty"`
	// Attempts counts the failed runs of the model the item is queued for
	// (a model that failed on this item alone); at the queue's MaxDeliver
	// the item is dead-lettered with an internal error result.
	Attempts int `msgpack:"attempts,omitempty"`
	// BestProbs are the probabilities of the most confident stage so far
	// (for a degraded answer with return_probabilities).
	BestProbs []float32 `msgpack:"best_probs,omitempty"`
}

// DedupKey is the key the item's message ids derive from: Key, or ID for
// items written before Key existed.
func (it *Item) DedupKey() string {
	if it.Key != "" {
		return it.Key
	}
	return it.ID
}

// StageMsgID is the Nats-Msg-Id of an item queued for model: a redelivered
// input republishing it is deduplicated by the model's stream.
func StageMsgID(key, model string) string { return key + "." + model }

// ResultMsgID is the Nats-Msg-Id of an item's result on the results stream
// (shared by every pipeline, so the pipeline is part of it).
func ResultMsgID(pipeline, key string) string { return pipeline + "." + key + ".result" }

// Best returns the most recent visit (the best prediction so far, since
// later stages are more accurate), or false if there is none.
func (it *Item) Best() (Visit, bool) {
	if len(it.Visits) == 0 {
		return Visit{}, false
	}
	return it.Visits[len(it.Visits)-1], true
}

// Result is the one answer every accepted request gets.
type Result struct {
	V        int    `msgpack:"v" json:"v"`
	ID       string `msgpack:"id" json:"id"`
	Pipeline string `msgpack:"pipeline" json:"pipeline"`
	Client   string `msgpack:"client,omitempty" json:"client,omitempty"`
	// Label and Confidence are the answer; unset when Error is set.
	Label         int       `msgpack:"label" json:"label"`
	Confidence    float64   `msgpack:"confidence" json:"confidence"`
	Probabilities []float32 `msgpack:"probabilities,omitempty" json:"probabilities,omitempty"`
	// AnsweredBy is the model that answered.
	AnsweredBy string `msgpack:"answered_by,omitempty" json:"answered_by,omitempty"`
	// Gear is the gear in force when the answer was made; AdmittedGear the
	// one at admission.
	Gear         string `msgpack:"gear,omitempty" json:"gear,omitempty"`
	AdmittedGear string `msgpack:"admitted_gear,omitempty" json:"admitted_gear,omitempty"`
	// Degraded: answered by an earlier stage than the cascade called for,
	// because the deadline did not leave time for the next stage.
	Degraded bool    `msgpack:"degraded,omitempty" json:"degraded,omitempty"`
	Visits   []Visit `msgpack:"visits,omitempty" json:"visits,omitempty"`
	// TotalNs is the time from admission to the result.
	TotalNs           int64  `msgpack:"total_ns" json:"total_ns"`
	AdmittedUnixNano  int64  `msgpack:"admitted_ns" json:"admitted_ns"`
	CompletedUnixNano int64  `msgpack:"completed_ns" json:"completed_ns"`
	Error             *Error `msgpack:"error,omitempty" json:"error,omitempty"`
	// Items holds, for a batched request (an input of shape [N, item
	// shape...] with N > 1), one result per item in input order; the
	// fields above then carry only the request's id, pipeline, client and
	// end-to-end times, or an Error that refused the whole request.
	Items []Result `msgpack:"items,omitempty" json:"items,omitempty"`
	// Index is the item's position in its batched request (in Items).
	Index int `msgpack:"index,omitempty" json:"index,omitempty"`
}

// GearState is the value of the KV key `gear`, written by the controller
// (JSON, so `nats kv get` is readable).
type GearState struct {
	Gear   string `json:"gear"`
	Index  int    `json:"index"`
	Reason string `json:"reason"`
	// QPS and Backlog are the measurements behind the decision.
	QPS     float64 `json:"qps"`
	Backlog int64   `json:"backlog"`
	// AtUnixNano is when the controller wrote it.
	AtUnixNano int64 `json:"at_ns"`
}
