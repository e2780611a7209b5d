package wire_test

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// mnistValues returns 784 deterministic pixel-like values in [0,1].
func mnistValues() []float32 {
	v := make([]float32, 784)
	for i := range v {
		v[i] = float32((i*37)%256) / 255
	}
	return v
}

func sampleItem() *wire.Item {
	return &wire.Item{
		ID:                  "req-1",
		Pipeline:            "mnist",
		Client:              "web",
		Input:               wire.FP32Tensor([]int64{1, 28, 28}, mnistValues()),
		DeadlineUnixNano:    1_700_000_000_123_456_789,
		ReturnProbabilities: true,
		ReplyTo:             "_INBOX.abc.def",
		ResultFormat:        wire.ResultFormatJSON,
		AdmittedGear:        "accurate",
		AdmittedUnixNano:    1_700_000_000_000_000_000,
		EnqueuedUnixNano:    1_700_000_000_000_100_000,
		Visits:              []wire.Visit{{Model: "small", Gear: "accurate", Confidence: 0.42, Label: 7, QueueNs: 1000, ComputeNs: 2000, BatchSize: 8}},
		BestProbs:           []float32{0.1, 0.2, 0.7},
	}
}

func sampleResult() *wire.Result {
	return &wire.Result{
		ID: "req-1", Pipeline: "mnist", Client: "web",
		Label: 7, Confidence: 0.93, Probabilities: []float32{0.01, 0.06, 0.93},
		AnsweredBy: "big", Gear: "accurate", AdmittedGear: "cheap", Degraded: true,
		Visits:  []wire.Visit{{Model: "small", Label: 1}, {Model: "big", Label: 7}},
		TotalNs: 1234567, AdmittedUnixNano: 10, CompletedUnixNano: 1234577,
	}
}

func TestCodecRoundTrip(t *testing.T) {
	c := wire.NewCodec()

	t.Run("request", func(t *testing.T) {
		in := &wire.Request{ID: "a", Input: wire.FP32Tensor([]int64{2}, []float32{1.5, -2}), TimeoutMs: 250, DeadlineUnixMs: 99, Client: "c", ReturnProbabilities: true}
		roundTrip(t, in, c.EncodeRequest, wire.DecodeRequest)
	})
	t.Run("item", func(t *testing.T) {
		out := roundTrip(t, sampleItem(), c.EncodeItem, wire.DecodeItem)
		got, err := out.Input.AppendFloat32s(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, mnistValues()) {
			t.Fatal("item input values changed in the round trip")
		}
	})
	t.Run("result", func(t *testing.T) {
		in := sampleResult()
		in.Error = &wire.Error{Code: wire.CodeOverloaded, Message: "full"}
		roundTrip(t, in, c.EncodeResult, wire.DecodeResult)
	})
}

// roundTrip encodes in with encode, decodes the bytes with decode and
// checks that the value comes back the same; it returns the decoded value.
func roundTrip[T any](t *testing.T, in *T, encode func(*T) ([]byte, error), decode func([]byte, *T) error) T {
	t.Helper()
	_, out := reencode(t, in, encode, decode)
	if !reflect.DeepEqual(*in, out) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", out, *in)
	}
	return out
}

// reencode encodes v with encode and decodes the bytes with decode,
// failing t if either fails; it returns the bytes and the decoded value.
func reencode[T any](t *testing.T, v *T, encode func(*T) ([]byte, error), decode func([]byte, *T) error) ([]byte, T) {
	t.Helper()
	b, err := encode(v)
	if err != nil {
		t.Fatal(err)
	}
	var out T
	if err := decode(b, &out); err != nil {
		t.Fatal(err)
	}
	return b, out
}

// TestEncodeReturnsOwnedBytes: the codec reuses its buffers, so every Encode
// must hand out a copy that a later Encode does not overwrite.
func TestEncodeReturnsOwnedBytes(t *testing.T) {
	c := wire.NewCodec()
	a, err := c.EncodeResult(&wire.Result{ID: "first"})
	if err != nil {
		t.Fatal(err)
	}
	snapshot := string(a)
	for range 10 {
		if _, err := c.EncodeResult(&wire.Result{ID: "second-and-longer"}); err != nil {
			t.Fatal(err)
		}
	}
	if string(a) != snapshot {
		t.Fatal("an earlier Encode's bytes changed after later Encodes")
	}
}

func TestVersionRejected(t *testing.T) {
	enc := func(t *testing.T, v any) []byte {
		t.Helper()
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		version int
		decode  func([]byte) error
		wantErr bool
	}{
		{"request v0 is read as current", 0, func(b []byte) error { return wire.DecodeRequest(b, &wire.Request{}) }, false},
		{"request current", wire.Version, func(b []byte) error { return wire.DecodeRequest(b, &wire.Request{}) }, false},
		{"request future", wire.Version + 1, func(b []byte) error { return wire.DecodeRequest(b, &wire.Request{}) }, true},
		{"item v0", 0, func(b []byte) error { return wire.DecodeItem(b, &wire.Item{}) }, true},
		{"item current", wire.Version, func(b []byte) error { return wire.DecodeItem(b, &wire.Item{}) }, false},
		{"item future", wire.Version + 1, func(b []byte) error { return wire.DecodeItem(b, &wire.Item{}) }, true},
		{"result v0", 0, func(b []byte) error { return wire.DecodeResult(b, &wire.Result{}) }, true},
		{"result current", wire.Version, func(b []byte) error { return wire.DecodeResult(b, &wire.Result{}) }, false},
		{"result future", wire.Version + 1, func(b []byte) error { return wire.DecodeResult(b, &wire.Result{}) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// All three messages keep the version under "v"; encode a map so
			// the codec's own V stamping is bypassed.
			err := tc.decode(enc(t, map[string]any{"v": tc.version, "id": "x"}))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if tc.wantErr && !strings.Contains(err.Error(), wire.ErrVersion.Error()) {
				t.Fatalf("err = %v, want it to mention %v", err, wire.ErrVersion)
			}
		})
	}
	// Items and results wrap the sentinel so callers can branch on it.
	err := wire.DecodeItem(enc(t, map[string]any{"v": 99}), &wire.Item{})
	if !errors.Is(err, wire.ErrVersion) {
		t.Fatalf("DecodeItem(v99) = %v, want ErrVersion", err)
	}
	// Requests are answered to producers, so they carry a typed code.
	err = wire.DecodeRequest(enc(t, map[string]any{"v": 99}), &wire.Request{})
	if wire.CodeOf(err) != wire.CodeInvalidInput {
		t.Fatalf("DecodeRequest(v99) code = %v, want %v", wire.CodeOf(err), wire.CodeInvalidInput)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {0xc1}, []byte("not msgpack at all"), {0x81, 0xa1, 'v', 0xa1, 'x'}} {
		if err := wire.DecodeRequest(b, &wire.Request{}); wire.CodeOf(err) != wire.CodeInvalidInput {
			t.Errorf("DecodeRequest(%q) = %v, want invalid_input", b, err)
		}
		if err := wire.DecodeItem(b, &wire.Item{}); err == nil {
			t.Errorf("DecodeItem(%q) succeeded", b)
		}
		if err := wire.DecodeResult(b, &wire.Result{}); err == nil {
			t.Errorf("DecodeResult(%q) succeeded", b)
		}
	}
}

func TestTensor(t *testing.T) {
	t.Run("elements", func(t *testing.T) {
		for _, tc := range []struct {
			shape []int64
			want  int64
		}{
			{nil, 1}, {[]int64{1, 28, 28}, 784}, {[]int64{0, 5}, 0}, {[]int64{-1, 3}, -1},
			{[]int64{1 << 20, 1 << 20}, -1}, {[]int64{math.MaxInt64}, -1},
		} {
			if got := (wire.Tensor{Shape: tc.shape}).Elements(); got != tc.want {
				t.Errorf("Elements(%v) = %d, want %d", tc.shape, got, tc.want)
			}
		}
	})
	t.Run("float32s", func(t *testing.T) {
		vals := []float32{0, 1, -2.5, float32(math.Inf(1)), 3.25e-20}
		ft := wire.FP32Tensor([]int64{5}, vals)
		got, err := ft.AppendFloat32s([]float32{9}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, append([]float32{9}, vals...)) {
			t.Fatalf("AppendFloat32s = %v", got)
		}
		// A misaligned sub-slice decodes the same (no unsafe cast then).
		buf := append([]byte{0}, ft.Data...)
		got, err = wire.Tensor{Datatype: wire.FP32, Data: buf[1:]}.AppendFloat32s(nil, 0)
		if err != nil || !reflect.DeepEqual(got, vals) {
			t.Fatalf("misaligned AppendFloat32s = %v, %v", got, err)
		}
		u8, err := wire.Tensor{Datatype: wire.UINT8, Data: []byte{0, 255, 51}}.AppendFloat32s(nil, 1.0/255)
		if err != nil || u8[0] != 0 || u8[1] != 1 || u8[2] != float32(51)*(1.0/255) {
			t.Fatalf("UINT8 AppendFloat32s = %v, %v", u8, err)
		}
		if _, err := (wire.Tensor{Datatype: wire.FP32, Data: []byte{1, 2, 3}}).AppendFloat32s(nil, 0); err == nil {
			t.Fatal("FP32 with 3 bytes decoded")
		}
		if _, err := (wire.Tensor{Datatype: "BF16"}).AppendFloat32s(nil, 0); err == nil {
			t.Fatal("unknown datatype decoded")
		}
	})
}

func TestValidTokenAndName(t *testing.T) {
	for _, tc := range []struct {
		s           string
		token, name bool
	}{
		{"a", true, true}, {"web-1_x", true, true}, {"web-1_X", true, false},
		{strings.Repeat("a", 32), true, true}, {strings.Repeat("a", 33), true, false},
		{strings.Repeat("a", 64), true, false}, {strings.Repeat("a", 65), false, false},
		{"", false, false}, {"a.b", false, false}, {"a b", false, false}, {"Bad Name", false, false},
		{"*", false, false}, {">", false, false}, {"é", false, false},
	} {
		if got := wire.ValidToken(tc.s); got != tc.token {
			t.Errorf("ValidToken(%q) = %v, want %v", tc.s, got, tc.token)
		}
		if got := wire.ValidName(tc.s); got != tc.name {
			t.Errorf("ValidName(%q) = %v, want %v", tc.s, got, tc.name)
		}
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{wire.InferSubject("mnist"), "cascade.mnist.infer"},
		{wire.JobsSubject("mnist", "web"), "cascade.mnist.jobs.web"},
		{wire.JobsStream("my-pipe"), "CASCADE_MY_PIPE_JOBS"},
		{wire.ModelSubject("mnist", "cnn"), "cascade.mnist.model.cnn"},
		{wire.ModelStream("mnist", "cnn-s"), "CASCADE_MNIST_CNN_S"},
		{wire.ResultSubject("mnist", "web"), "cascade.mnist.result.web"},
		{wire.StatsSubject("mnist", "i1"), "cascade.mnist.stats.ingress.i1"},
		{wire.KVBucket("mnist"), "cascade_mnist"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// benchLoop measures op, which fails the benchmark with an error, with
// allocations reported.
func benchLoop(b *testing.B, op func() error) {
	b.Helper()
	b.ReportAllocs()
	for b.Loop() {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
}

// benchDecode measures decode of buf (encoded with err) into a zero T,
// with its throughput.
func benchDecode[T any](b *testing.B, buf []byte, err error, decode func([]byte, *T) error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	var v, zero T // v outside the loop: one allocation, not one per run
	benchLoop(b, func() error {
		v = zero
		return decode(buf, &v)
	})
}

func BenchmarkEncodeItemMNIST(b *testing.B) {
	c := wire.NewCodec()
	it := sampleItem()
	benchLoop(b, func() error {
		_, err := c.EncodeItem(it)
		return err
	})
}

func BenchmarkDecodeItemMNIST(b *testing.B) {
	buf, err := wire.NewCodec().EncodeItem(sampleItem())
	benchDecode(b, buf, err, wire.DecodeItem)
}

func BenchmarkDecodeRequestMNIST(b *testing.B) {
	buf, err := wire.NewCodec().EncodeRequest(&wire.Request{ID: "req-1", Input: wire.FP32Tensor([]int64{1, 28, 28}, mnistValues()), TimeoutMs: 500})
	benchDecode(b, buf, err, wire.DecodeRequest)
}

func BenchmarkAppendFloat32sMNIST(b *testing.B) {
	t := wire.FP32Tensor([]int64{1, 28, 28}, mnistValues())
	dst := make([]float32, 0, 784)
	benchLoop(b, func() (err error) {
		dst, err = t.AppendFloat32s(dst[:0], 0)
		return err
	})
}

// TestDecodeRejectsHostileLengths: a few bytes claiming a huge array or bin
// must fail fast instead of allocating what they claim (msgpack/v5
// pre-allocates slices of the claimed length).
func TestDecodeRejectsHostileLengths(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"bin32 data", []byte{0x81, 0xa5, 'i', 'n', 'p', 'u', 't', 0x81, 0xa4, 'd', 'a', 't', 'a', 0xc6, 0xff, 0xff, 0xff, 0xff}},
		{"array32 visits", []byte{0x81, 0xa6, 'v', 'i', 's', 'i', 't', 's', 0xdd, 0x0f, 0xff, 0xff, 0xff}},
		{"array32 best_probs", []byte{0x81, 0xaa, 'b', 'e', 's', 't', '_', 'p', 'r', 'o', 'b', 's', 0xdd, 0x0f, 0xff, 0xff, 0xff}},
		{"array32 shape", []byte{0x81, 0xa5, 'i', 'n', 'p', 'u', 't', 0x81, 0xa5, 's', 'h', 'a', 'p', 'e', 0xdd, 0x0f, 0xff, 0xff, 0xff}},
		{"map32", []byte{0xdf, 0x0f, 0xff, 0xff, 0xff}},
		{"deep nesting", append(bytes.Repeat([]byte{0x91}, 1000), 0x01)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := wire.DecodeRequest(tc.b, &wire.Request{}); wire.CodeOf(err) != wire.CodeInvalidInput {
				t.Errorf("DecodeRequest = %v, want invalid_input", err)
			}
			if err := wire.DecodeItem(tc.b, &wire.Item{}); err == nil {
				t.Error("DecodeItem succeeded")
			}
			if err := wire.DecodeResult(tc.b, &wire.Result{}); err == nil {
				t.Error("DecodeResult succeeded")
			}
		})
	}
}

func TestCheckReplySubject(t *testing.T) {
	for _, c := range []struct {
		subject string
		ok      bool
	}{
		{"_INBOX.abc", true},
		{"_INBOX.billing.abc.1", true},
		{"_R_.abc.def", true},
		{"_R_.", false},
		{"_INBOX.", false},
		{"_INBOX", false},
		{"_INBOX.>", false},
		{"_INBOX.*.x", false},
		{"_INBOX..x", false},
		{"_INBOX.a b", false},
		{"cascade.mnist.result.victim", false},
		{"$KV.cascade_mnist.plan", false},
		{"$JS.API.STREAM.DELETE.X", false},
		{"other.subject", false},
		{"_INBOX." + strings.Repeat("x", 300), false},
	} {
		err := wire.CheckReplySubject(wire.DefaultInboxPrefixes, c.subject)
		if (err == nil) != c.ok {
			t.Errorf("CheckReplySubject(%q) = %v, want ok %v", c.subject, err, c.ok)
		}
		if err != nil && !errors.Is(err, wire.ErrReplySubject) {
			t.Errorf("CheckReplySubject(%q) = %v, not ErrReplySubject", c.subject, err)
		}
	}
	for _, c := range []struct {
		prefix string
		ok     bool
	}{
		{"_INBOX.", true}, {"_R_.", true}, {"replies.team-a.", true},
		{"", false}, {"_INBOX", false}, {"cascade.", false}, {"$KV.", false}, {"$", false}, {"*.", false}, {"a..", false},
	} {
		if err := wire.CheckInboxPrefix(c.prefix); (err == nil) != c.ok {
			t.Errorf("CheckInboxPrefix(%q) = %v, want ok %v", c.prefix, err, c.ok)
		}
	}
}

// TestEnvelopeRoundTripAndLegacyItem: an envelope keeps every item as it
// was; a version 1 single-item message decodes as an envelope of that item;
// an unknown version is ErrVersion.
func TestEnvelopeRoundTripAndLegacyItem(t *testing.T) {
	c := wire.NewCodec()
	a := wire.Item{ID: "a", Key: "k-a", Pipeline: "p", Client: "c1", ReplyTo: "_INBOX.x.1", Input: wire.FP32Tensor([]int64{2}, []float32{1, 2}), DeadlineUnixNano: 42}
	b := wire.Item{ID: "b", Key: "k-b", Pipeline: "p", Durable: true, ResultFormat: wire.ResultFormatJSON, Input: wire.Tensor{Datatype: wire.UINT8, Shape: []int64{2}, Data: []byte{3, 4}}}
	raw, err := c.EncodeEnvelope(&wire.Envelope{ID: "env-1", Items: []wire.Item{a, b}})
	if err != nil {
		t.Fatal(err)
	}
	var e wire.Envelope
	if err := wire.DecodeEnvelope(raw, &e); err != nil {
		t.Fatal(err)
	}
	a.V, b.V = wire.Version, wire.Version
	if e.ID != "env-1" || len(e.Items) != 2 || !reflect.DeepEqual(e.Items[0], a) || !reflect.DeepEqual(e.Items[1], b) {
		t.Fatalf("round trip: %+v", e)
	}
	legacy, err := c.EncodeItem(&wire.Item{ID: "old", Pipeline: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.DecodeEnvelope(legacy, &e); err != nil || len(e.Items) != 1 || e.Items[0].ID != "old" || e.ID != "" {
		t.Fatalf("legacy item: %+v, %v", e, err)
	}
	if err := wire.DecodeEnvelope([]byte{0x81, 0xa1, 'v', 0x07}, &e); !errors.Is(err, wire.ErrVersion) {
		t.Fatalf("version 7: %v, want ErrVersion", err)
	}
}
