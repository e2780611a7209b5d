package wire

import (
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// The messages every item makes on every hop (Item, Tensor, Visit,
// Result, Error) encode and decode by hand instead of by reflection: the
// same msgpack maps with the same keys and omitempty rules as their struct
// tags say, several times faster. TestFastCodecMatchesReflection checks
// both ways against the reflection codec.

// keyBuf holds a map key while it is compared; keys are short.
type keyBuf [48]byte

// readKey reads a map key into buf without allocating; a key longer than
// buf is returned as "" after being consumed (unknown: its value is
// skipped).
func readKey(d *msgpack.Decoder, buf *keyBuf) ([]byte, error) {
	n, err := d.DecodeBytesLen()
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, nil
	}
	if n > len(buf) {
		long := make([]byte, n)
		if err := d.ReadFull(long); err != nil {
			return nil, err
		}
		return nil, nil
	}
	if err := d.ReadFull(buf[:n]); err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// decodeMap calls field for every key of a map (nil decodes as empty).
func decodeMap(d *msgpack.Decoder, field func(key []byte) error) error {
	n, err := d.DecodeMapLen()
	if err != nil {
		return err
	}
	var buf keyBuf
	for range max(n, 0) {
		key, err := readKey(d, &buf)
		if err != nil {
			return err
		}
		if err := field(key); err != nil {
			return fmt.Errorf("field %q: %w", key, err)
		}
	}
	return nil
}

// entries counts a map's entries before it is written.
func entries(conds ...bool) int {
	n := 0
	for _, c := range conds {
		if c {
			n++
		}
	}
	return n
}

func encStr(e *msgpack.Encoder, k, v string) error {
	if err := e.EncodeString(k); err != nil {
		return err
	}
	return e.EncodeString(v)
}

func encInt(e *msgpack.Encoder, k string, v int64) error {
	if err := e.EncodeString(k); err != nil {
		return err
	}
	return e.EncodeInt(v)
}

func encBool(e *msgpack.Encoder, k string, v bool) error {
	if err := e.EncodeString(k); err != nil {
		return err
	}
	return e.EncodeBool(v)
}

func encFloat32s(e *msgpack.Encoder, k string, v []float32) error {
	if err := e.EncodeString(k); err != nil {
		return err
	}
	if v == nil {
		return e.EncodeNil()
	}
	if err := e.EncodeArrayLen(len(v)); err != nil {
		return err
	}
	for _, x := range v {
		if err := e.EncodeFloat32(x); err != nil {
			return err
		}
	}
	return nil
}

func decFloat32s(d *msgpack.Decoder) ([]float32, error) {
	n, err := d.DecodeArrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	out := make([]float32, n)
	for i := range out {
		if out[i], err = d.DecodeFloat32(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func decInt64s(d *msgpack.Decoder) ([]int64, error) {
	n, err := d.DecodeArrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	out := make([]int64, n)
	for i := range out {
		if out[i], err = d.DecodeInt64(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// EncodeMsgpack writes t as its struct tags say.
func (t *Tensor) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeMapLen(3); err != nil {
		return err
	}
	if err := encStr(e, "datatype", t.Datatype); err != nil {
		return err
	}
	if err := e.EncodeString("shape"); err != nil {
		return err
	}
	if t.Shape == nil {
		if err := e.EncodeNil(); err != nil {
			return err
		}
	} else {
		if err := e.EncodeArrayLen(len(t.Shape)); err != nil {
			return err
		}
		for _, s := range t.Shape {
			if err := e.EncodeInt(s); err != nil {
				return err
			}
		}
	}
	if err := e.EncodeString("data"); err != nil {
		return err
	}
	return e.EncodeBytes(t.Data)
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (t *Tensor) DecodeMsgpack(d *msgpack.Decoder) error {
	*t = Tensor{}
	return decodeMap(d, func(key []byte) (err error) {
		switch string(key) {
		case "datatype":
			t.Datatype, err = d.DecodeString()
		case "shape":
			t.Shape, err = decInt64s(d)
		case "data":
			t.Data, err = d.DecodeBytes()
		default:
			err = d.Skip()
		}
		return err
	})
}

// EncodeMsgpack writes v as its struct tags say.
func (v *Visit) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeMapLen(7); err != nil {
		return err
	}
	if err := encStr(e, "model", v.Model); err != nil {
		return err
	}
	if err := encStr(e, "gear", v.Gear); err != nil {
		return err
	}
	if err := e.EncodeString("confidence"); err != nil {
		return err
	}
	if err := e.EncodeFloat64(v.Confidence); err != nil {
		return err
	}
	if err := encInt(e, "label", int64(v.Label)); err != nil {
		return err
	}
	if err := encInt(e, "queue_ns", v.QueueNs); err != nil {
		return err
	}
	if err := encInt(e, "compute_ns", v.ComputeNs); err != nil {
		return err
	}
	return encInt(e, "batch_size", int64(v.BatchSize))
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (v *Visit) DecodeMsgpack(d *msgpack.Decoder) error {
	*v = Visit{}
	return decodeMap(d, func(key []byte) (err error) {
		switch string(key) {
		case "model":
			v.Model, err = d.DecodeString()
		case "gear":
			v.Gear, err = d.DecodeString()
		case "confidence":
			v.Confidence, err = d.DecodeFloat64()
		case "label":
			v.Label, err = d.DecodeInt()
		case "queue_ns":
			v.QueueNs, err = d.DecodeInt64()
		case "compute_ns":
			v.ComputeNs, err = d.DecodeInt64()
		case "batch_size":
			v.BatchSize, err = d.DecodeInt()
		default:
			err = d.Skip()
		}
		return err
	})
}

func encVisits(e *msgpack.Encoder, vs []Visit) error {
	if err := e.EncodeString("visits"); err != nil {
		return err
	}
	if err := e.EncodeArrayLen(len(vs)); err != nil {
		return err
	}
	for i := range vs {
		if err := vs[i].EncodeMsgpack(e); err != nil {
			return err
		}
	}
	return nil
}

func decVisits(d *msgpack.Decoder) ([]Visit, error) {
	n, err := d.DecodeArrayLen()
	if err != nil || n < 0 {
		return nil, err
	}
	out := make([]Visit, n)
	for i := range out {
		if err := out[i].DecodeMsgpack(d); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// EncodeMsgpack writes it as its struct tags say.
func (it *Item) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 9 + entries(it.Key != "", it.ReturnProbabilities, it.ReplyTo != "", it.Durable, it.ReplyBatched,
		it.BatchIndex != 0, it.ResultFormat != "", len(it.Visits) > 0, it.Door != "", it.Attempts != 0, len(it.BestProbs) > 0)
	if err := e.EncodeMapLen(n); err != nil {
		return err
	}
	if err := encInt(e, "v", int64(it.V)); err != nil {
		return err
	}
	if err := encStr(e, "id", it.ID); err != nil {
		return err
	}
	if it.Key != "" {
		if err := encStr(e, "key", it.Key); err != nil {
			return err
		}
	}
	if err := encStr(e, "pipeline", it.Pipeline); err != nil {
		return err
	}
	if err := encStr(e, "client", it.Client); err != nil {
		return err
	}
	if err := e.EncodeString("input"); err != nil {
		return err
	}
	if err := it.Input.EncodeMsgpack(e); err != nil {
		return err
	}
	if err := encInt(e, "deadline_ns", it.DeadlineUnixNano); err != nil {
		return err
	}
	if it.ReturnProbabilities {
		if err := encBool(e, "return_probabilities", true); err != nil {
			return err
		}
	}
	if it.ReplyTo != "" {
		if err := encStr(e, "reply_to", it.ReplyTo); err != nil {
			return err
		}
	}
	if it.Durable {
		if err := encBool(e, "durable", true); err != nil {
			return err
		}
	}
	if it.ReplyBatched {
		if err := encBool(e, "reply_batched", true); err != nil {
			return err
		}
	}
	if it.BatchIndex != 0 {
		if err := encInt(e, "batch_index", int64(it.BatchIndex)); err != nil {
			return err
		}
	}
	if it.ResultFormat != "" {
		if err := encStr(e, "result_format", it.ResultFormat); err != nil {
			return err
		}
	}
	if err := encStr(e, "admitted_gear", it.AdmittedGear); err != nil {
		return err
	}
	if err := encInt(e, "admitted_ns", it.AdmittedUnixNano); err != nil {
		return err
	}
	if err := encInt(e, "enqueued_ns", it.EnqueuedUnixNano); err != nil {
		return err
	}
	if len(it.Visits) > 0 {
		if err := encVisits(e, it.Visits); err != nil {
			return err
		}
	}
	if it.Door != "" {
		if err := encStr(e, "door", it.Door); err != nil {
			return err
		}
	}
	if it.Attempts != 0 {
		if err := encInt(e, "attempts", int64(it.Attempts)); err != nil {
			return err
		}
	}
	if len(it.BestProbs) > 0 {
		if err := encFloat32s(e, "best_probs", it.BestProbs); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (it *Item) DecodeMsgpack(d *msgpack.Decoder) error {
	*it = Item{}
	return decodeMap(d, func(key []byte) (err error) {
		switch string(key) {
		case "v":
			it.V, err = d.DecodeInt()
		case "id":
			it.ID, err = d.DecodeString()
		case "key":
			it.Key, err = d.DecodeString()
		case "pipeline":
			it.Pipeline, err = d.DecodeString()
		case "client":
			it.Client, err = d.DecodeString()
		case "input":
			err = it.Input.DecodeMsgpack(d)
		case "deadline_ns":
			it.DeadlineUnixNano, err = d.DecodeInt64()
		case "return_probabilities":
			it.ReturnProbabilities, err = d.DecodeBool()
		case "reply_to":
			it.ReplyTo, err = d.DecodeString()
		case "durable":
			it.Durable, err = d.DecodeBool()
		case "reply_batched":
			it.ReplyBatched, err = d.DecodeBool()
		case "batch_index":
			it.BatchIndex, err = d.DecodeInt()
		case "result_format":
			it.ResultFormat, err = d.DecodeString()
		case "admitted_gear":
			it.AdmittedGear, err = d.DecodeString()
		case "admitted_ns":
			it.AdmittedUnixNano, err = d.DecodeInt64()
		case "enqueued_ns":
			it.EnqueuedUnixNano, err = d.DecodeInt64()
		case "visits":
			it.Visits, err = decVisits(d)
		case "door":
			it.Door, err = d.DecodeString()
		case "attempts":
			it.Attempts, err = d.DecodeInt()
		case "best_probs":
			it.BestProbs, err = decFloat32s(d)
		default:
			err = d.Skip()
		}
		return err
	})
}

// EncodeMsgpack writes e as its struct tags say.
func (er *Error) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeMapLen(2); err != nil {
		return err
	}
	if err := encStr(e, "code", string(er.Code)); err != nil {
		return err
	}
	return encStr(e, "message", er.Message)
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (er *Error) DecodeMsgpack(d *msgpack.Decoder) error {
	*er = Error{}
	return decodeMap(d, func(key []byte) (err error) {
		switch string(key) {
		case "code":
			var s string
			s, err = d.DecodeString()
			er.Code = Code(s)
		case "message":
			er.Message, err = d.DecodeString()
		default:
			err = d.Skip()
		}
		return err
	})
}

// EncodeMsgpack writes r as its struct tags say.
func (r *Result) EncodeMsgpack(e *msgpack.Encoder) error {
	n := 8 + entries(r.Client != "", len(r.Probabilities) > 0, r.AnsweredBy != "", r.Gear != "", r.AdmittedGear != "",
		r.Degraded, len(r.Visits) > 0, r.Error != nil, len(r.Items) > 0, r.Index != 0)
	if err := e.EncodeMapLen(n); err != nil {
		return err
	}
	if err := encInt(e, "v", int64(r.V)); err != nil {
		return err
	}
	if err := encStr(e, "id", r.ID); err != nil {
		return err
	}
	if err := encStr(e, "pipeline", r.Pipeline); err != nil {
		return err
	}
	if r.Client != "" {
		if err := encStr(e, "client", r.Client); err != nil {
			return err
		}
	}
	if err := encInt(e, "label", int64(r.Label)); err != nil {
		return err
	}
	if err := e.EncodeString("confidence"); err != nil {
		return err
	}
	if err := e.EncodeFloat64(r.Confidence); err != nil {
		return err
	}
	if len(r.Probabilities) > 0 {
		if err := encFloat32s(e, "probabilities", r.Probabilities); err != nil {
			return err
		}
	}
	if r.AnsweredBy != "" {
		if err := encStr(e, "answered_by", r.AnsweredBy); err != nil {
			return err
		}
	}
	if r.Gear != "" {
		if err := encStr(e, "gear", r.Gear); err != nil {
			return err
		}
	}
	if r.AdmittedGear != "" {
		if err := encStr(e, "admitted_gear", r.AdmittedGear); err != nil {
			return err
		}
	}
	if r.Degraded {
		if err := encBool(e, "degraded", true); err != nil {
			return err
		}
	}
	if len(r.Visits) > 0 {
		if err := encVisits(e, r.Visits); err != nil {
			return err
		}
	}
	if err := encInt(e, "total_ns", r.TotalNs); err != nil {
		return err
	}
	if err := encInt(e, "admitted_ns", r.AdmittedUnixNano); err != nil {
		return err
	}
	if err := encInt(e, "completed_ns", r.CompletedUnixNano); err != nil {
		return err
	}
	if r.Error != nil {
		if err := e.EncodeString("error"); err != nil {
			return err
		}
		if err := r.Error.EncodeMsgpack(e); err != nil {
			return err
		}
	}
	if len(r.Items) > 0 {
		if err := e.EncodeString("items"); err != nil {
			return err
		}
		if err := e.EncodeArrayLen(len(r.Items)); err != nil {
			return err
		}
		for i := range r.Items {
			if err := r.Items[i].EncodeMsgpack(e); err != nil {
				return err
			}
		}
	}
	if r.Index != 0 {
		if err := encInt(e, "index", int64(r.Index)); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack reads what EncodeMsgpack (or reflection) writes.
func (r *Result) DecodeMsgpack(d *msgpack.Decoder) error {
	*r = Result{}
	return decodeMap(d, func(key []byte) (err error) {
		switch string(key) {
		case "v":
			r.V, err = d.DecodeInt()
		case "id":
			r.ID, err = d.DecodeString()
		case "pipeline":
			r.Pipeline, err = d.DecodeString()
		case "client":
			r.Client, err = d.DecodeString()
		case "label":
			r.Label, err = d.DecodeInt()
		case "confidence":
			r.Confidence, err = d.DecodeFloat64()
		case "probabilities":
			r.Probabilities, err = decFloat32s(d)
		case "answered_by":
			r.AnsweredBy, err = d.DecodeString()
		case "gear":
			r.Gear, err = d.DecodeString()
		case "admitted_gear":
			r.AdmittedGear, err = d.DecodeString()
		case "degraded":
			r.Degraded, err = d.DecodeBool()
		case "visits":
			r.Visits, err = decVisits(d)
		case "total_ns":
			r.TotalNs, err = d.DecodeInt64()
		case "admitted_ns":
			r.AdmittedUnixNano, err = d.DecodeInt64()
		case "completed_ns":
			r.CompletedUnixNano, err = d.DecodeInt64()
		case "error":
			var c byte
			if c, err = d.PeekCode(); err != nil {
				return err
			}
			if c == msgpcode.Nil {
				return d.DecodeNil()
			}
			r.Error = &Error{}
			err = r.Error.DecodeMsgpack(d)
		case "items":
			var n int
			if n, err = d.DecodeArrayLen(); err != nil || n < 0 {
				return err
			}
			r.Items = make([]Result, n)
			for i := range r.Items {
				if err = r.Items[i].DecodeMsgpack(d); err != nil {
					return err
				}
			}
		case "index":
			r.Index, err = d.DecodeInt()
		default:
			err = d.Skip()
		}
		return err
	})
}
