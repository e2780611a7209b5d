package wire

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// The messages every item makes on every hop (Envelope, Item, Tensor,
// Visit, Result, Error) encode and decode by hand instead of by reflection:
// the same msgpack maps with the same keys and omitempty rules as their
// struct tags say, written straight into a byte slice and read straight out
// of one (mpbytes.go). TestFastCodecMatchesReflection checks both ways
// against the reflection codec. The EncodeMsgpack/DecodeMsgpack methods
// make msgpack/v5 use the same code where these types sit inside others
// (a Request's Tensor).

// appendTensor writes t as its struct tags say.
func appendTensor(b []byte, t *Tensor) []byte {
	b = appendMapLen(b, 3)
	b = appendStr(appendStr(b, "datatype"), t.Datatype)
	b = appendStr(b, "shape")
	if t.Shape == nil {
		b = append(b, 0xc0)
	} else {
		b = appendArrayLen(b, len(t.Shape))
		for _, s := range t.Shape {
			b = appendInt(b, s)
		}
	}
	return appendBin(appendStr(b, "data"), t.Data)
}

// readTensor reads what appendTensor (or reflection) writes. Data shares
// the message's memory.
func (r *mpReader) readTensor(t *Tensor) error {
	*t = Tensor{}
	return r.fields(func(key []byte) (err error) {
		switch string(key) {
		case "datatype":
			t.Datatype, err = r.sym()
		case "shape":
			t.Shape, err = r.int64s()
		case "data":
			t.Data, err = r.bin()
		default:
			err = r.skip()
		}
		return err
	})
}

func (r *mpReader) int64s() ([]int64, error) {
	n, err := r.arrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	out := make([]int64, n)
	for i := range out {
		if out[i], err = r.int(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (r *mpReader) float32s() ([]float32, error) {
	n, err := r.arrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	out := make([]float32, n)
	for i := range out {
		if out[i], err = r.float32(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (r *mpReader) intValue() (int, error) {
	n, err := r.int()
	return int(n), err
}

// appendVisit writes v as its struct tags say.
func appendVisit(b []byte, v *Visit) []byte {
	b = appendMapLen(b, 7)
	b = appendStr(appendStr(b, "model"), v.Model)
	b = appendStr(appendStr(b, "gear"), v.Gear)
	b = appendFloat64(appendStr(b, "confidence"), v.Confidence)
	b = appendInt(appendStr(b, "label"), int64(v.Label))
	b = appendInt(appendStr(b, "queue_ns"), v.QueueNs)
	b = appendInt(appendStr(b, "compute_ns"), v.ComputeNs)
	return appendInt(appendStr(b, "batch_size"), int64(v.BatchSize))
}

func (r *mpReader) readVisit(v *Visit) error {
	*v = Visit{}
	return r.fields(func(key []byte) (err error) {
		switch string(key) {
		case "model":
			v.Model, err = r.sym()
		case "gear":
			v.Gear, err = r.sym()
		case "confidence":
			v.Confidence, err = r.float64()
		case "label":
			v.Label, err = r.intValue()
		case "queue_ns":
			v.QueueNs, err = r.int()
		case "compute_ns":
			v.ComputeNs, err = r.int()
		case "batch_size":
			v.BatchSize, err = r.intValue()
		default:
			err = r.skip()
		}
		return err
	})
}

func appendVisits(b []byte, vs []Visit) []byte {
	b = appendArrayLen(appendStr(b, "visits"), len(vs))
	for i := range vs {
		b = appendVisit(b, &vs[i])
	}
	return b
}

func (r *mpReader) visits() ([]Visit, error) {
	n, err := r.arrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	out := make([]Visit, n)
	for i := range out {
		if err := r.readVisit(&out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// count returns how many of conds hold: the omitempty fields a map holds.
func count(conds ...bool) int {
	n := 0
	for _, c := range conds {
		if c {
			n++
		}
	}
	return n
}

// appendItem writes it as its struct tags say.
func appendItem(b []byte, it *Item) []byte {
	n := 9 + count(it.Key != "", it.ReturnProbabilities, it.ReplyTo != "", it.Durable, it.ReplyBatched,
		it.BatchIndex != 0, it.ResultFormat != "", len(it.Visits) > 0, it.Door != "", it.Attempts != 0, len(it.BestProbs) > 0)
	b = appendMapLen(b, n)
	b = appendInt(appendStr(b, "v"), int64(it.V))
	b = appendStr(appendStr(b, "id"), it.ID)
	if it.Key != "" {
		b = appendStr(appendStr(b, "key"), it.Key)
	}
	b = appendStr(appendStr(b, "pipeline"), it.Pipeline)
	b = appendStr(appendStr(b, "client"), it.Client)
	b = appendTensor(appendStr(b, "input"), &it.Input)
	b = appendInt(appendStr(b, "deadline_ns"), it.DeadlineUnixNano)
	if it.ReturnProbabilities {
		b = appendBool(appendStr(b, "return_probabilities"), true)
	}
	if it.ReplyTo != "" {
		b = appendStr(appendStr(b, "reply_to"), it.ReplyTo)
	}
	if it.Durable {
		b = appendBool(appendStr(b, "durable"), true)
	}
	if it.ReplyBatched {
		b = appendBool(appendStr(b, "reply_batched"), true)
	}
	if it.BatchIndex != 0 {
		b = appendInt(appendStr(b, "batch_index"), int64(it.BatchIndex))
	}
	if it.ResultFormat != "" {
		b = appendStr(appendStr(b, "result_format"), it.ResultFormat)
	}
	b = appendStr(appendStr(b, "admitted_gear"), it.AdmittedGear)
	b = appendInt(appendStr(b, "admitted_ns"), it.AdmittedUnixNano)
	b = appendInt(appendStr(b, "enqueued_ns"), it.EnqueuedUnixNano)
	if len(it.Visits) > 0 {
		b = appendVisits(b, it.Visits)
	}
	if it.Door != "" {
		b = appendStr(appendStr(b, "door"), it.Door)
	}
	if it.Attempts != 0 {
		b = appendInt(appendStr(b, "attempts"), int64(it.Attempts))
	}
	if len(it.BestProbs) > 0 {
		b = appendFloat32s(appendStr(b, "best_probs"), it.BestProbs)
	}
	return b
}

func (r *mpReader) readItem(it *Item) error {
	*it = Item{}
	return r.fields(func(key []byte) (err error) {
		switch string(key) {
		case "v":
			it.V, err = r.intValue()
		case "id":
			it.ID, err = r.str()
		case "key":
			it.Key, err = r.str()
		case "pipeline":
			it.Pipeline, err = r.sym()
		case "client":
			it.Client, err = r.sym()
		case "input":
			err = r.readTensor(&it.Input)
		case "deadline_ns":
			it.DeadlineUnixNano, err = r.int()
		case "return_probabilities":
			it.ReturnProbabilities, err = r.bool()
		case "reply_to":
			it.ReplyTo, err = r.sym()
		case "durable":
			it.Durable, err = r.bool()
		case "reply_batched":
			it.ReplyBatched, err = r.bool()
		case "batch_index":
			it.BatchIndex, err = r.intValue()
		case "result_format":
			it.ResultFormat, err = r.sym()
		case "admitted_gear":
			it.AdmittedGear, err = r.sym()
		case "admitted_ns":
			it.AdmittedUnixNano, err = r.int()
		case "enqueued_ns":
			it.EnqueuedUnixNano, err = r.int()
		case "visits":
			it.Visits, err = r.visits()
		case "door":
			it.Door, err = r.sym()
		case "attempts":
			it.Attempts, err = r.intValue()
		case "best_probs":
			it.BestProbs, err = r.float32s()
		default:
			err = r.skip()
		}
		return err
	})
}

// appendEnvelope writes e as its struct tags say.
func appendEnvelope(b []byte, e *Envelope) []byte {
	b = appendMapLen(b, 3)
	b = appendInt(appendStr(b, "v"), int64(e.V))
	b = appendStr(appendStr(b, "id"), e.ID)
	b = appendStr(b, "items")
	if e.Items == nil {
		return append(b, 0xc0)
	}
	b = appendArrayLen(b, len(e.Items))
	for i := range e.Items {
		b = appendItem(b, &e.Items[i])
	}
	return b
}

func (r *mpReader) readEnvelope(e *Envelope) error {
	*e = Envelope{}
	return r.fields(func(key []byte) (err error) {
		switch string(key) {
		case "v":
			e.V, err = r.intValue()
		case "id":
			e.ID, err = r.str()
		case "items":
			var n int
			if n, err = r.arrayLen(); err != nil || n < 0 {
				return err
			}
			e.Items = make([]Item, n)
			for i := range e.Items {
				if err = r.readItem(&e.Items[i]); err != nil {
					return err
				}
			}
		default:
			err = r.skip()
		}
		return err
	})
}

func appendError(b []byte, er *Error) []byte {
	b = appendMapLen(b, 2)
	b = appendStr(appendStr(b, "code"), string(er.Code))
	return appendStr(appendStr(b, "message"), er.Message)
}

func (r *mpReader) readError(er *Error) error {
	*er = Error{}
	return r.fields(func(key []byte) (err error) {
		switch string(key) {
		case "code":
			var s string
			s, err = r.sym()
			er.Code = Code(s)
		case "message":
			er.Message, err = r.str()
		default:
			err = r.skip()
		}
		return err
	})
}

// appendResult writes res as its struct tags say.
func appendResult(b []byte, res *Result) []byte {
	n := 8 + count(res.Client != "", len(res.Probabilities) > 0, res.AnsweredBy != "", res.Gear != "", res.AdmittedGear != "",
		res.Degraded, len(res.Visits) > 0, res.Error != nil, len(res.Items) > 0, res.Index != 0)
	b = appendMapLen(b, n)
	b = appendInt(appendStr(b, "v"), int64(res.V))
	b = appendStr(appendStr(b, "id"), res.ID)
	b = appendStr(appendStr(b, "pipeline"), res.Pipeline)
	if res.Client != "" {
		b = appendStr(appendStr(b, "client"), res.Client)
	}
	b = appendInt(appendStr(b, "label"), int64(res.Label))
	b = appendFloat64(appendStr(b, "confidence"), res.Confidence)
	if len(res.Probabilities) > 0 {
		b = appendFloat32s(appendStr(b, "probabilities"), res.Probabilities)
	}
	if res.AnsweredBy != "" {
		b = appendStr(appendStr(b, "answered_by"), res.AnsweredBy)
	}
	if res.Gear != "" {
		b = appendStr(appendStr(b, "gear"), res.Gear)
	}
	if res.AdmittedGear != "" {
		b = appendStr(appendStr(b, "admitted_gear"), res.AdmittedGear)
	}
	if res.Degraded {
		b = appendBool(appendStr(b, "degraded"), true)
	}
	if len(res.Visits) > 0 {
		b = appendVisits(b, res.Visits)
	}
	b = appendInt(appendStr(b, "total_ns"), res.TotalNs)
	b = appendInt(appendStr(b, "admitted_ns"), res.AdmittedUnixNano)
	b = appendInt(appendStr(b, "completed_ns"), res.CompletedUnixNano)
	if res.Error != nil {
		b = appendError(appendStr(b, "error"), res.Error)
	}
	if len(res.Items) > 0 {
		b = appendArrayLen(appendStr(b, "items"), len(res.Items))
		for i := range res.Items {
			b = appendResult(b, &res.Items[i])
		}
	}
	if res.Index != 0 {
		b = appendInt(appendStr(b, "index"), int64(res.Index))
	}
	return b
}

// readResult reads what appendResult (or reflection) writes; depth bounds
// the nesting of Items.
func (r *mpReader) readResult(res *Result, depth int) error {
	if depth >= maxMsgpackDepth {
		return fmt.Errorf("msgpack nesting deeper than %d", maxMsgpackDepth)
	}
	*res = Result{}
	return r.fields(func(key []byte) (err error) {
		switch string(key) {
		case "v":
			res.V, err = r.intValue()
		case "id":
			res.ID, err = r.str()
		case "pipeline":
			res.Pipeline, err = r.sym()
		case "client":
			res.Client, err = r.sym()
		case "label":
			res.Label, err = r.intValue()
		case "confidence":
			res.Confidence, err = r.float64()
		case "probabilities":
			res.Probabilities, err = r.float32s()
		case "answered_by":
			res.AnsweredBy, err = r.sym()
		case "gear":
			res.Gear, err = r.sym()
		case "admitted_gear":
			res.AdmittedGear, err = r.sym()
		case "degraded":
			res.Degraded, err = r.bool()
		case "visits":
			res.Visits, err = r.visits()
		case "total_ns":
			res.TotalNs, err = r.int()
		case "admitted_ns":
			res.AdmittedUnixNano, err = r.int()
		case "completed_ns":
			res.CompletedUnixNano, err = r.int()
		case "error":
			if r.nilNext() {
				return nil
			}
			res.Error = &Error{}
			err = r.readError(res.Error)
		case "items":
			var n int
			if n, err = r.arrayLen(); err != nil || n < 0 {
				return err
			}
			res.Items = make([]Result, n)
			for i := range res.Items {
				if err = r.readResult(&res.Items[i], depth+1); err != nil {
					return err
				}
			}
		case "index":
			res.Index, err = r.intValue()
		default:
			err = r.skip()
		}
		return err
	})
}

// The msgpack/v5 hooks: one implementation, reached through the byte-level
// code. A decoder hook reads the raw value first (a copy), so decoded
// byte strings never share a buffer msgpack/v5 reuses.

func encodeWith(e *msgpack.Encoder, b []byte) error {
	_, err := e.Writer().Write(b)
	return err
}

func decodeWith(d *msgpack.Decoder, read func(r *mpReader) error) error {
	raw, err := d.DecodeRaw()
	if err != nil {
		return err
	}
	return read(&mpReader{b: raw})
}

// EncodeMsgpack writes t as its struct tags say.
func (t *Tensor) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeWith(e, appendTensor(nil, t))
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (t *Tensor) DecodeMsgpack(d *msgpack.Decoder) error {
	return decodeWith(d, func(r *mpReader) error { return r.readTensor(t) })
}

// EncodeMsgpack writes v as its struct tags say.
func (v *Visit) EncodeMsgpack(e *msgpack.Encoder) error { return encodeWith(e, appendVisit(nil, v)) }

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (v *Visit) DecodeMsgpack(d *msgpack.Decoder) error {
	return decodeWith(d, func(r *mpReader) error { return r.readVisit(v) })
}

// EncodeMsgpack writes it as its struct tags say.
func (it *Item) EncodeMsgpack(e *msgpack.Encoder) error { return encodeWith(e, appendItem(nil, it)) }

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (it *Item) DecodeMsgpack(d *msgpack.Decoder) error {
	return decodeWith(d, func(r *mpReader) error { return r.readItem(it) })
}

// EncodeMsgpack writes e as its struct tags say.
func (e *Envelope) EncodeMsgpack(enc *msgpack.Encoder) error {
	return encodeWith(enc, appendEnvelope(nil, e))
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (e *Envelope) DecodeMsgpack(d *msgpack.Decoder) error {
	return decodeWith(d, func(r *mpReader) error { return r.readEnvelope(e) })
}

// EncodeMsgpack writes er as its struct tags say.
func (er *Error) EncodeMsgpack(e *msgpack.Encoder) error { return encodeWith(e, appendError(nil, er)) }

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (er *Error) DecodeMsgpack(d *msgpack.Decoder) error {
	return decodeWith(d, func(r *mpReader) error { return r.readError(er) })
}

// EncodeMsgpack writes res as its struct tags say.
func (res *Result) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeWith(e, appendResult(nil, res))
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (res *Result) DecodeMsgpack(d *msgpack.Decoder) error {
	return decodeWith(d, func(r *mpReader) error { return r.readResult(res, 0) })
}

// appendRequest writes r as its struct tags say.
func appendRequest(b []byte, r *Request) []byte {
	n := 2 + count(r.ID != "", r.TimeoutMs != 0, r.DeadlineUnixMs != 0, r.Client != "", r.ReturnProbabilities, len(r.Outputs) > 0)
	b = appendMapLen(b, n)
	b = appendInt(appendStr(b, "v"), int64(r.V))
	if r.ID != "" {
		b = appendStr(appendStr(b, "id"), r.ID)
	}
	b = appendTensor(appendStr(b, "input"), &r.Input)
	if r.TimeoutMs != 0 {
		b = appendInt(appendStr(b, "timeout_ms"), r.TimeoutMs)
	}
	if r.DeadlineUnixMs != 0 {
		b = appendInt(appendStr(b, "deadline_unix_ms"), r.DeadlineUnixMs)
	}
	if r.Client != "" {
		b = appendStr(appendStr(b, "client"), r.Client)
	}
	if r.ReturnProbabilities {
		b = appendBool(appendStr(b, "return_probabilities"), true)
	}
	if len(r.Outputs) > 0 {
		b = appendArrayLen(appendStr(b, "outputs"), len(r.Outputs))
		for _, o := range r.Outputs {
			b = appendStr(b, o)
		}
	}
	return b
}

// readRequest reads what appendRequest (or reflection) writes. The input's
// bytes share the message's memory.
func (r *mpReader) readRequest(req *Request) error {
	*req = Request{}
	return r.fields(func(key []byte) (err error) {
		switch string(key) {
		case "v":
			req.V, err = r.intValue()
		case "id":
			req.ID, err = r.str()
		case "input":
			err = r.readTensor(&req.Input)
		case "timeout_ms":
			req.TimeoutMs, err = r.int()
		case "deadline_unix_ms":
			req.DeadlineUnixMs, err = r.int()
		case "client":
			req.Client, err = r.sym()
		case "return_probabilities":
			req.ReturnProbabilities, err = r.bool()
		case "outputs":
			var n int
			if n, err = r.arrayLen(); err != nil || n < 0 {
				return err
			}
			req.Outputs = make([]string, n)
			for i := range req.Outputs {
				if req.Outputs[i], err = r.sym(); err != nil {
					return err
				}
			}
		default:
			err = r.skip()
		}
		return err
	})
}

// EncodeMsgpack writes req as its struct tags say.
func (req *Request) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeWith(e, appendRequest(nil, req))
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (req *Request) DecodeMsgpack(d *msgpack.Decoder) error {
	return decodeWith(d, func(r *mpReader) error { return r.readRequest(req) })
}
