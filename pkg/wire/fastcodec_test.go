package wire

import (
	"bytes"
	"fmt"
	"reflect"
	"runtime"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// Shadow types: each has its original's fields and tags but none of its
// methods, so msgpack encodes and decodes its own fields by reflection.
// A field of another wire type still goes through that type's hand-written
// codec; TestLeafCodecsMatchReflection checks those of the types made only
// of plain fields (Tensor, Visit, Error), so together the tests check every
// byte of a whole message against reflection. Being conversions, the
// shadows cannot fall out of step with the types they shadow.
type (
	shadowTensor   Tensor
	shadowVisit    Visit
	shadowError    Error
	shadowItem     Item
	shadowResult   Result
	shadowEnvelope Envelope
	shadowRequest  Request
)

// TestLeafCodecsMatchReflection: the wire types made only of plain fields
// encode by hand to reflection's bytes and read them back.
func TestLeafCodecsMatchReflection(t *testing.T) {
	for i, v := range []Tensor{{}, {Datatype: UINT8, Shape: []int64{2, 2}, Data: []byte{1, 2, 3, 4}}, FP32Tensor([]int64{2}, []float32{1.5, -2})} {
		checkMatchesReflection[Tensor, shadowTensor](t, fmt.Sprintf("tensor %d", i), v, v)
	}
	for i, v := range []Visit{{}, {Model: "a", Gear: "g1", Confidence: 0.25, Label: 3, QueueNs: 5, ComputeNs: 700, BatchSize: 16}, {Model: "b", Label: -1}} {
		checkMatchesReflection[Visit, shadowVisit](t, fmt.Sprintf("visit %d", i), v, v)
	}
	for i, v := range []Error{{}, {Code: CodeInternal, Message: "boom"}} {
		checkMatchesReflection[Error, shadowError](t, fmt.Sprintf("error %d", i), v, v)
	}
}

// TestFastCodecMatchesReflection: the hand-written codec writes exactly the
// bytes reflection writes for the same fields and tags, and each reads the
// other's bytes back to the same value.
func TestFastCodecMatchesReflection(t *testing.T) {
	visits := []Visit{{Model: "a", Gear: "g1", Confidence: 0.25, Label: 3, QueueNs: 5, ComputeNs: 700, BatchSize: 16}, {Model: "b", Label: -1}}
	items := []Item{
		{},
		{V: 1, ID: "x", Pipeline: "p", Client: "c", Input: Tensor{Datatype: UINT8, Shape: []int64{2, 2}, Data: []byte{1, 2, 3, 4}}, DeadlineUnixNano: -9},
		{V: 1, ID: "y", Key: "k", Pipeline: "p", Client: "c", Input: FP32Tensor([]int64{2}, []float32{1.5, -2}), DeadlineUnixNano: 1 << 60,
			ReturnProbabilities: true, ReplyTo: "_INBOX.a.b", Durable: true, ReplyBatched: true, BatchIndex: 300, ResultFormat: ResultFormatJSON,
			AdmittedGear: "g", AdmittedUnixNano: 12345678901234, EnqueuedUnixNano: 42, Visits: visits, Door: "jobs", Attempts: 2, BestProbs: []float32{0.1, 0.9}},
	}
	for i, it := range items {
		checkMatchesReflection[Item, shadowItem](t, fmt.Sprintf("item %d", i), it, normalizeItem(it))
	}
	results := []Result{
		{},
		{V: 1, ID: "r", Pipeline: "p", Client: "c", Label: 7, Confidence: 0.5, Probabilities: []float32{0.5, 0.5}, AnsweredBy: "m", Gear: "g", AdmittedGear: "h",
			Degraded: true, Visits: visits, TotalNs: 9, AdmittedUnixNano: 8, CompletedUnixNano: 7, Error: &Error{Code: CodeInternal, Message: "boom"}, Index: 5,
			Items: []Result{{ID: "i1", Index: 1}, {ID: "i2", Error: &Error{Code: CodeOverloaded}}}},
	}
	for i, r := range results {
		checkMatchesReflection[Result, shadowResult](t, fmt.Sprintf("result %d", i), r, r)
	}
}

// checkMatchesReflection checks that v encodes by hand to the bytes its
// shadow S encodes to by reflection, and that those bytes decode back to
// want.
func checkMatchesReflection[T, S any](t *testing.T, what string, v, want T) {
	t.Helper()
	fast, err := msgpack.Marshal(&v)
	if err != nil {
		t.Fatal(err)
	}
	slow := reflectionBytes[S](t, what, v, fast)
	var back T
	if err := msgpack.Unmarshal(slow, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Errorf("%s: decoded %+v (%v), want %+v", what, back, err, v)
	}
}

// reflectionBytes returns what v's shadow S encodes to by reflection,
// checking that fast, v's hand-written bytes, are the same.
func reflectionBytes[S any](t *testing.T, what string, v any, fast []byte) []byte {
	t.Helper()
	shadow := toShadow[S](v)
	slow, err := compact(&shadow)
	if err != nil {
		t.Fatal(err)
	}
	if string(fast) != string(slow) {
		t.Errorf("%s: hand-written bytes differ from reflection's\n fast %x\n slow %x", what, fast, slow)
	}
	return slow
}

// compact encodes v by reflection as Codec does (compact integers).
func compact(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	err := enc.Encode(v)
	return buf.Bytes(), err
}

// toShadow converts v to its shadow type S.
func toShadow[S any](v any) S {
	return reflect.ValueOf(v).Convert(reflect.TypeFor[S]()).Interface().(S)
}

// normalizeItem is it as a decode returns it: empty slices omitted on the
// wire come back nil.
func normalizeItem(it Item) Item {
	if len(it.Visits) == 0 {
		it.Visits = nil
	}
	if len(it.BestProbs) == 0 {
		it.BestProbs = nil
	}
	return it
}

// TestCodecWritesWhatReflectionWrites: the Codec's byte-level paths
// (EncodeEnvelope, EncodeItem, EncodeResult and their decoders) write the
// bytes reflection writes and read reflection's bytes back.
func TestCodecWritesWhatReflectionWrites(t *testing.T) {
	c := NewCodec()
	in := FP32Tensor([]int64{1, 3}, []float32{0.25, 1, -3})
	env := Envelope{ID: "e1", Items: []Item{
		{ID: "a", Key: "k1", Pipeline: "p", Client: "c", Input: in, DeadlineUnixNano: 99, ReplyTo: "_INBOX.x", ReplyBatched: true, BatchIndex: 20},
		{ID: "b", Pipeline: "p", Client: "c", Input: Tensor{Datatype: UINT8, Shape: []int64{3}, Data: []byte{}}, Durable: true,
			Visits: []Visit{{Model: "m", Gear: "g", Confidence: 0.5, Label: 2}}, BestProbs: []float32{0.5, 0.5}},
	}}
	for _, e := range []Envelope{env, {ID: "empty"}} {
		fast, err := c.EncodeEnvelope(&e)
		if err != nil {
			t.Fatal(err)
		}
		slow := reflectionBytes[shadowEnvelope](t, "envelope "+e.ID, e, fast)
		var back Envelope
		if err := DecodeEnvelope(slow, &back); err != nil {
			t.Fatal(err)
		}
		want := e
		want.Items = nil
		for _, it := range e.Items {
			it.V = Version
			want.Items = append(want.Items, normalizeItem(it))
		}
		if !reflect.DeepEqual(back, want) {
			t.Errorf("envelope %s: decoded %+v, want %+v", e.ID, back, want)
		}
	}
	it := env.Items[0]
	fast, _ := c.EncodeItem(&it)
	if slow, _ := msgpack.Marshal(&it); string(fast) != string(slow) {
		t.Errorf("EncodeItem differs from the msgpack hook\n fast %x\n slow %x", fast, slow)
	}
	var backItem Item
	if err := DecodeItem(fast, &backItem); err != nil || !reflect.DeepEqual(backItem, normalizeItem(it)) {
		t.Errorf("DecodeItem = %+v (%v), want %+v", backItem, err, it)
	}
	res := Result{ID: "r", Pipeline: "p", Label: 3, Confidence: 0.75, Items: []Result{{ID: "x", Index: 1}}}
	fast, _ = c.EncodeResult(&res)
	shadow := toShadow[shadowResult](res)
	if slow, _ := compact(&shadow); string(fast) != string(slow) {
		t.Errorf("EncodeResult differs from reflection\n fast %x\n slow %x", fast, slow)
	}
	var backResult Result
	if err := DecodeResult(fast, &backResult); err != nil || !reflect.DeepEqual(backResult, res) {
		t.Errorf("DecodeResult = %+v (%v), want %+v", backResult, err, res)
	}
}

// TestByteDecodersRefuseHugeClaims: a short message that claims a huge
// array or string fails without allocating for the claim.
func TestByteDecodersRefuseHugeClaims(t *testing.T) {
	msgs := map[string][]byte{
		"array32 of items":   {0x83, 0xa1, 'v', 0x02, 0xa2, 'i', 'd', 0xa0, 0xa5, 'i', 't', 'e', 'm', 's', 0xdd, 0x10, 0, 0, 0},
		"str32 id":           {0x81, 0xa2, 'i', 'd', 0xdb, 0x7f, 0, 0, 0, 'x'},
		"map32":              {0xdf, 0x7f, 0xff, 0xff, 0xff},
		"nested unknown key": append([]byte{0x81, 0xa1, 'z'}, bytes.Repeat([]byte{0x91}, 100)...),
	}
	for name, b := range msgs {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var e Envelope
		if err := DecodeEnvelope(b, &e); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Errorf("%s: allocated %d bytes for a %d-byte message", name, n, len(b))
		}
	}
}

// TestRequestCodecMatchesReflection: requests, which producers write by
// hand in any language, encode as reflection does and decode from
// reflection's bytes.
func TestRequestCodecMatchesReflection(t *testing.T) {
	c := NewCodec()
	for i, r := range []Request{
		{Input: Tensor{Datatype: UINT8, Shape: []int64{2, 2}, Data: []byte{1, 2, 3, 4}}},
		{ID: "x", Input: FP32Tensor([]int64{1}, []float32{0.5}), TimeoutMs: 250, DeadlineUnixMs: 1 << 41, Client: "billing",
			ReturnProbabilities: true, Outputs: []string{OutputLabel, OutputProbabilities}},
	} {
		fast, err := c.EncodeRequest(&r)
		if err != nil {
			t.Fatal(err)
		}
		slow := reflectionBytes[shadowRequest](t, fmt.Sprintf("request %d", i), r, fast)
		var back Request
		if err := DecodeRequest(slow, &back); err != nil || !reflect.DeepEqual(back, r) {
			t.Errorf("request %d: decoded %+v (%v), want %+v", i, back, err, r)
		}
	}
	// A producer's map with extra keys, nil values and bin strings reads
	// as msgpack/v5 reads it.
	raw := []byte{0x84, 0xa2, 'i', 'd', 0xc4, 0x01, 'z', 0xa5, 'e', 'x', 't', 'r', 'a', 0x92, 0x01, 0xc0,
		0xa6, 'c', 'l', 'i', 'e', 'n', 't', 0xc0, 0xa5, 'i', 'n', 'p', 'u', 't', 0x80}
	var got Request
	if err := DecodeRequest(raw, &got); err != nil || got.ID != "z" || got.Client != "" {
		t.Errorf("hand-written request: %+v, %v", got, err)
	}
	var viaReflection shadowRequest
	if err := msgpack.Unmarshal(raw, &viaReflection); err != nil || viaReflection.ID != "z" {
		t.Errorf("msgpack/v5 reads it as %+v, %v", viaReflection, err)
	}
}
