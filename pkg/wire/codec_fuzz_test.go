package wire_test

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Fuzz targets for every decoder that reads bytes from outside the process.
// Run one with e.g.
//
//	go test ./pkg/wire -run '^$' -fuzz '^FuzzDecodeOIPRequest$' -fuzztime 30s
//
// Seeds are added with f.Add; crashers the fuzzer finds land in
// testdata/fuzz/<target>/ and are replayed by plain `go test`.

// seeder returns a function that adds an encoding to f's corpus, failing f
// where the encoding failed: add(c.EncodeItem(it)).
func seeder(f *testing.F) func(b []byte, err error) {
	return func(b []byte, err error) {
		f.Helper()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// acceptRequest decodes b with decode, reporting whether it did; a refusal
// must be an invalid_input error.
func acceptRequest(t *testing.T, b []byte, decode func([]byte, *wire.Request) error) (wire.Request, bool) {
	t.Helper()
	var r wire.Request
	if err := decode(b, &r); err != nil {
		if wire.CodeOf(err) != wire.CodeInvalidInput {
			t.Fatalf("error %v has code %v, want invalid_input", err, wire.CodeOf(err))
		}
		return r, false
	}
	return r, true
}

// fuzzStable fuzzes decode: whatever it accepts passes check and
// re-encodes stably (checkStable).
func fuzzStable[T any](f *testing.F, encode func(*T) ([]byte, error), decode func([]byte, *T) error, check func(t *testing.T, v *T)) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var v T
		if err := decode(b, &v); err != nil {
			return
		}
		check(t, &v)
		checkStable(t, &v, encode, decode)
	})
}

// checkStable encodes v, decodes that and encodes it again: the two
// encodings must be the same. (Encodings are compared, not values: NaNs in
// float fields defeat DeepEqual.)
func checkStable[T any](t *testing.T, v *T, encode func(*T) ([]byte, error), decode func([]byte, *T) error) {
	t.Helper()
	b2, v2 := reencode(t, v, encode, decode)
	b3, err := encode(&v2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b2, b3) {
		t.Fatal("re-encoding is not stable")
	}
}

func FuzzDecodeRequest(f *testing.F) {
	c := wire.NewCodec()
	add := seeder(f)
	for _, r := range []*wire.Request{
		{ID: "a", Input: wire.FP32Tensor([]int64{1, 2}, []float32{1, 2}), TimeoutMs: 5, Client: "c", ReturnProbabilities: true},
		{Input: wire.Tensor{Datatype: wire.UINT8, Shape: []int64{3}, Data: []byte{1, 2, 3}}},
		{},
	} {
		add(c.EncodeRequest(r))
	}
	f.Add([]byte{0x80})
	f.Add([]byte{0xc1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := acceptRequest(t, b, wire.DecodeRequest)
		if !ok {
			return
		}
		// Whatever decoded re-encodes and decodes to the same value.
		r.V = wire.Version
		b2, err := c.EncodeRequest(&r)
		if err != nil {
			t.Fatal(err)
		}
		var r2 wire.Request
		if err := wire.DecodeRequest(b2, &r2); err != nil {
			t.Fatal(err)
		}
		if !equalRequest(r, r2) {
			t.Fatalf("re-decode differs:\n%+v\n%+v", r, r2)
		}
		_, _ = r.Input.AppendFloat32s(nil, 1)
		_ = r.Input.Elements()
	})
}

func FuzzDecodeOIPRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":"r1","inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[0.5,-1e3]}],"parameters":{"timeout_ms":250,"client":"web","return_probabilities":true}}`,
		`{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[[[1,2],[3,4]]]}]}`,
		`{"inputs":[{"name":"x","shape":[3],"datatype":"UINT8","data":[0,255,7]}],"parameters":{"deadline_unix_ms":1}}`,
		`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}`,
		`{"inputs":[]}`, `[]`, `null`, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := acceptRequest(t, b, wire.DecodeOIPRequest)
		if !ok {
			return
		}
		// Decoded data holds whole elements of the datatype.
		if size := wire.DatatypeSize(r.Input.Datatype); size == 0 || len(r.Input.Data)%size != 0 {
			t.Fatalf("decoded %d bytes of %q", len(r.Input.Data), r.Input.Datatype)
		}
		// And survives the trip back to JSON exactly.
		body, err := wire.EncodeOIPRequest(&r, "x")
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var r2 wire.Request
		if err := wire.DecodeOIPRequest(body, &r2); err != nil {
			t.Fatalf("re-decode %s: %v", body, err)
		}
		if !equalRequest(r, r2) {
			t.Fatalf("re-decode differs:\n%+v\n%+v", r, r2)
		}
	})
}

func FuzzDecodeItem(f *testing.F) {
	c := wire.NewCodec()
	add := seeder(f)
	add(c.EncodeItem(sampleItem()))
	add(c.EncodeItem(&wire.Item{ID: "x"}))
	f.Add([]byte{0x81, 0xa1, 'v', 0x01})
	fuzzStable(f, c.EncodeItem, wire.DecodeItem, func(t *testing.T, it *wire.Item) {
		if it.V != wire.Version {
			t.Fatalf("accepted version %d", it.V)
		}
		_, _ = it.Best()
		_, _ = it.Input.AppendFloat32s(nil, 1)
	})
}

func FuzzDecodeResult(f *testing.F) {
	c := wire.NewCodec()
	add := seeder(f)
	r := sampleResult()
	add(c.EncodeResult(r))
	r.Error = wire.Errorf(wire.CodeInternal, "x")
	add(c.EncodeResult(r))
	fuzzStable(f, c.EncodeResult, wire.DecodeResult, func(t *testing.T, r *wire.Result) {
		// Every decodable result can be answered over HTTP without a panic.
		_, _ = wire.EncodeOIPResponse(r, "p")
	})
}

func FuzzDecodeOIPResponse(f *testing.F) {
	seeder(f)(wire.EncodeOIPResponse(sampleResult(), "mnist"))
	f.Add(wire.EncodeOIPError(wire.Errorf(wire.CodeOverloaded, "full")))
	f.Add([]byte(`{"outputs":[{"name":"label","data":[1]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r wire.Result
		_ = wire.DecodeOIPResponse(b, &r)
	})
}

// equalRequest compares requests treating nil and empty slices as equal
// (msgpack and JSON do not keep the difference).
func equalRequest(a, b wire.Request) bool {
	norm := func(r *wire.Request) {
		if len(r.Input.Shape) == 0 {
			r.Input.Shape = nil
		}
		if len(r.Input.Data) == 0 {
			r.Input.Data = nil
		}
	}
	norm(&a)
	norm(&b)
	return reflect.DeepEqual(a, b)
}

func FuzzDecodeEnvelope(f *testing.F) {
	c := wire.NewCodec()
	add := seeder(f)
	add(c.EncodeEnvelope(&wire.Envelope{ID: "e1", Items: []wire.Item{*sampleItem(), {ID: "x"}}}))
	add(c.EncodeItem(sampleItem())) // a legacy message: one item
	f.Add([]byte{0x82, 0xa1, 'v', 0x02, 0xa5, 'i', 't', 'e', 'm', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff})
	fuzzStable(f, c.EncodeEnvelope, wire.DecodeEnvelope, func(t *testing.T, e *wire.Envelope) {
		if e.V != wire.EnvelopeVersion {
			t.Fatalf("accepted version %d", e.V)
		}
		for i := range e.Items {
			_, _ = e.Items[i].Input.AppendFloat32s(nil, 1)
		}
	})
}
