package wire_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func TestDecodeOIPRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		body string
		want wire.Request
	}{
		{
			name: "flat FP32 with parameters",
			body: `{"id":"r1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[0,0.5,-1.25,3e2]}],
			        "parameters":{"timeout_ms":250,"client":"web","return_probabilities":true,"unknown":{"x":1}}}`,
			want: wire.Request{V: wire.Version, ID: "r1", Input: wire.FP32Tensor([]int64{2, 2}, []float32{0, 0.5, -1.25, 300}), TimeoutMs: 250, Client: "web", ReturnProbabilities: true},
		},
		{
			name: "nested FP32",
			body: `{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[[[1, 2],[3, 4]]]}],"parameters":{"deadline_unix_ms":1700000000000}}`,
			want: wire.Request{V: wire.Version, Input: wire.FP32Tensor([]int64{1, 2, 2}, []float32{1, 2, 3, 4}), DeadlineUnixMs: 1700000000000},
		},
		{
			name: "UINT8",
			body: `{"inputs":[{"name":"x","shape":[3],"datatype":"UINT8","data":[0,255,1.0e1]}]}`,
			want: wire.Request{V: wire.Version, Input: wire.Tensor{Datatype: wire.UINT8, Shape: []int64{3}, Data: []byte{0, 255, 10}}},
		},
		{
			name: "requested outputs: probabilities implies return_probabilities",
			body: `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[7]}],"outputs":[{"name":"probabilities"},{"name":"label"}]}`,
			want: wire.Request{V: wire.Version, Input: wire.FP32Tensor([]int64{1}, []float32{7}), Outputs: []string{"probabilities", "label"}, ReturnProbabilities: true},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got wire.Request
			if err := wire.DecodeOIPRequest([]byte(tc.body), &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeOIPRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body, wantMsg string
	}{
		{"not json", `{"inputs": [`, "decode JSON"},
		{"no inputs", `{"inputs": []}`, "0 inputs"},
		{"two inputs", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[1]},{"name":"b","shape":[1],"datatype":"FP32","data":[1]}]}`, "2 inputs"},
		{"bad datatype", `{"inputs": [{"name":"a","shape":[1],"datatype":"BF16","data":[1]}]}`, "not supported"},
		{"no data", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32"}]}`, "no data"},
		{"null data", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":null}]}`, "array"},
		{"scalar data", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":1}]}`, "array"},
		{"string values", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":["1"]}]}`, "array of numbers"},
		{"bool values", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[true]}]}`, "array of numbers"},
		{"FP32 overflow", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[1e39]}]}`, "not an FP32"},
		{"UINT8 negative", `{"inputs": [{"name":"a","shape":[1],"datatype":"UINT8","data":[-1]}]}`, "not a UINT8"},
		{"UINT8 too big", `{"inputs": [{"name":"a","shape":[1],"datatype":"UINT8","data":[256]}]}`, "not a UINT8"},
		{"UINT8 fraction", `{"inputs": [{"name":"a","shape":[1],"datatype":"UINT8","data":[1.5]}]}`, "not a UINT8"},
		{"timeout string", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"timeout_ms":"5"}}`, "timeout_ms"},
		{"timeout fraction", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"timeout_ms":0.5}}`, "whole number"},
		{"timeout negative", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"timeout_ms":-5}}`, "out of range"},
		{"client number", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"client":5}}`, "client"},
		{"probabilities string", `{"inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"return_probabilities":"yes"}}`, "return_probabilities"},
		{"id number", `{"id": 5, "inputs": [{"name":"a","shape":[1],"datatype":"FP32","data":[1]}]}`, "decode JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := wire.DecodeOIPRequest([]byte(tc.body), &wire.Request{})
			if wire.CodeOf(err) != wire.CodeInvalidInput {
				t.Fatalf("err = %v, want code invalid_input", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantMsg)
			}
		})
	}
}

// TestDecodeOIPRequestLyingShape: a huge declared shape must not make the
// decoder allocate for it; size checks are the ingress's job.
func TestDecodeOIPRequestLyingShape(t *testing.T) {
	var r wire.Request
	body := `{"inputs":[{"name":"x","shape":[1000000000,1000000000],"datatype":"FP32","data":[1,2]}]}`
	if err := wire.DecodeOIPRequest([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Input.Data) != 8 || cap(r.Input.Data) > 64 {
		t.Fatalf("data len %d cap %d, want 8 and a small capacity", len(r.Input.Data), cap(r.Input.Data))
	}
}

func TestOIPRequestRoundTrip(t *testing.T) {
	for _, in := range []wire.Request{
		{V: wire.Version, ID: "x1", Input: wire.FP32Tensor([]int64{1, 28, 28}, mnistValues()), TimeoutMs: 100, DeadlineUnixMs: 5, Client: "c", ReturnProbabilities: true},
		{V: wire.Version, Input: wire.Tensor{Datatype: wire.UINT8, Shape: []int64{4}, Data: []byte{0, 1, 128, 255}}},
		{V: wire.Version, Input: wire.FP32Tensor([]int64{3}, []float32{-0.0, 1e-45, 3.4028235e38})},
	} {
		b, err := wire.EncodeOIPRequest(&in, "input")
		if err != nil {
			t.Fatal(err)
		}
		var out wire.Request
		if err := wire.DecodeRequestBody("application/json; charset=utf-8", b, &out); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(in, out) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", out, in)
		}
	}
}

func TestIsJSON(t *testing.T) {
	for _, tc := range []struct {
		ct   string
		want bool
	}{
		{"application/json", true}, {"Application/JSON", true}, {"application/json; charset=utf-8", true},
		{"", false}, {"application/msgpack", false}, {"text/plain", false}, {"application/json;;", true},
	} {
		if got := wire.IsJSON(tc.ct); got != tc.want {
			t.Errorf("IsJSON(%q) = %v, want %v", tc.ct, got, tc.want)
		}
	}
}

func TestOIPResponse(t *testing.T) {
	in := sampleResult()
	b, err := wire.EncodeOIPResponse(in, "mnist")
	if err != nil {
		t.Fatal(err)
	}
	// The body is plain OIP: model_name, id and typed outputs.
	var raw struct {
		ModelName string `json:"model_name"`
		ID        string `json:"id"`
		Outputs   []struct {
			Name     string    `json:"name"`
			Shape    []int64   `json:"shape"`
			Datatype string    `json:"datatype"`
			Data     []float64 `json:"data"`
		} `json:"outputs"`
		Parameters map[string]any `json:"parameters"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.ModelName != "mnist" || raw.ID != "req-1" || len(raw.Outputs) != 3 {
		t.Fatalf("response = %s", b)
	}
	wantOut := []struct {
		name, dt string
		shape    int64
		first    float64
	}{{"label", "INT64", 1, 7}, {"confidence", "FP64", 1, 0.93}, {"probabilities", "FP32", 3, float64(float32(0.01))}}
	for i, w := range wantOut {
		o := raw.Outputs[i]
		if o.Name != w.name || o.Datatype != w.dt || !reflect.DeepEqual(o.Shape, []int64{w.shape}) || len(o.Data) != int(w.shape) || float32(o.Data[0]) != float32(w.first) {
			t.Errorf("output %d = %+v, want %+v", i, o, w)
		}
	}
	for k, v := range map[string]any{"answered_by": "big", "gear": "accurate", "admitted_gear": "cheap", "degraded": true, "visits": "small,big", "stages": 2.0} {
		if raw.Parameters[k] != v {
			t.Errorf("parameters[%q] = %v, want %v", k, raw.Parameters[k], v)
		}
	}

	var out wire.Result
	if err := wire.DecodeOIPResponse(b, &out); err != nil {
		t.Fatal(err)
	}
	want := *in
	want.V = wire.Version
	want.Visits = []wire.Visit{{Model: "small"}, {Model: "big"}} // only names travel
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("decoded:\n got %+v\nwant %+v", out, want)
	}

	t.Run("without probabilities", func(t *testing.T) {
		r := sampleResult()
		r.Probabilities = nil
		b, err := wire.EncodeOIPResponse(r, "mnist")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "probabilities") {
			t.Fatalf("response has probabilities: %s", b)
		}
	})
}

func TestOIPError(t *testing.T) {
	b := wire.EncodeOIPError(wire.Errorf(wire.CodeOverloaded, "queue of %q is full", "small"))
	if got, want := string(b), `{"error":"queue of \"small\" is full","code":"overloaded"}`; got != want {
		t.Fatalf("error body = %s, want %s", got, want)
	}
	var r wire.Result
	if err := wire.DecodeOIPResponse(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.ID != "" || r.Error == nil || r.Error.Code != wire.CodeOverloaded || r.Error.Message != `queue of "small" is full` {
		t.Fatalf("decoded error = %q %+v", r.ID, r.Error)
	}
	// An error result is written as the error body with the result's id,
	// so a reader of the results stream knows which job it answers.
	b2, err := wire.EncodeOIPResponse(&wire.Result{ID: "x", Error: wire.Errorf(wire.CodeOverloaded, "queue of %q is full", "small")}, "mnist")
	if want := `{"id":"x","error":"queue of \"small\" is full","code":"overloaded"}`; err != nil || string(b2) != want {
		t.Fatalf("error result body = %s, %v; want %s", b2, err, want)
	}
	if err := wire.DecodeOIPResponse(b2, &r); err != nil {
		t.Fatal(err)
	}
	if r.ID != "x" || r.Error == nil || r.Error.Code != wire.CodeOverloaded {
		t.Fatalf("decoded error result = %q %+v", r.ID, r.Error)
	}
	if got := string(wire.EncodeOIPError(errTest("boom"))); got != `{"error":"boom","code":"internal"}` {
		t.Fatalf("plain error body = %s", got)
	}
}

// TestEncodeResultAs: each result format yields its body and Content-Type,
// and DecodeResultBody reads it back by that Content-Type.
func TestEncodeResultAs(t *testing.T) {
	failed := sampleResult()
	failed.Error = wire.Errorf(wire.CodeDeadlineExceeded, "too late")
	c := wire.NewCodec()
	for _, tc := range []struct {
		name, format, wantCT string
		in                   *wire.Result
	}{
		{"msgpack", wire.ResultFormatMsgpack, wire.ContentTypeMsgpack, sampleResult()},
		{"json", wire.ResultFormatJSON, wire.ContentTypeJSON, sampleResult()},
		{"json error", wire.ResultFormatJSON, wire.ContentTypeJSON, failed},
		{"unknown format is msgpack", "yaml", wire.ContentTypeMsgpack, sampleResult()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, ct, err := c.EncodeResultAs(tc.in, tc.format)
			if err != nil {
				t.Fatal(err)
			}
			if ct != tc.wantCT {
				t.Fatalf("Content-Type %q, want %q", ct, tc.wantCT)
			}
			if isJSON := json.Valid(b); isJSON != (ct == wire.ContentTypeJSON) {
				t.Fatalf("body is JSON: %v, Content-Type %q: %q", isJSON, ct, b)
			}
			var out wire.Result
			if err := wire.DecodeResultBody(ct, b, &out); err != nil {
				t.Fatal(err)
			}
			want := *tc.in
			want.V = wire.Version
			switch {
			case ct == wire.ContentTypeJSON && want.Error != nil:
				want = wire.Result{V: wire.Version, ID: want.ID, Error: want.Error} // the error body
			case ct == wire.ContentTypeJSON:
				want.Visits = []wire.Visit{{Model: "small"}, {Model: "big"}} // only names travel
			}
			if !reflect.DeepEqual(out, want) {
				t.Fatalf("decoded:\n got %+v\nwant %+v", out, want)
			}
		})
	}
	if wire.ResultFormatFor("application/json; charset=utf-8") != wire.ResultFormatJSON ||
		wire.ResultFormatFor("") != wire.ResultFormatMsgpack || wire.ResultFormatFor(wire.ContentTypeMsgpack) != wire.ResultFormatMsgpack {
		t.Error("ResultFormatFor does not follow IsJSON")
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }

func BenchmarkDecodeOIPRequestMNIST(b *testing.B) {
	body, err := wire.EncodeOIPRequest(&wire.Request{ID: "r", Input: wire.FP32Tensor([]int64{1, 28, 28}, mnistValues())}, "x")
	benchDecode(b, body, err, wire.DecodeOIPRequest)
}

func BenchmarkEncodeOIPResponse(b *testing.B) {
	r := sampleResult()
	r.Probabilities = make([]float32, 10)
	for i := range r.Probabilities {
		r.Probabilities[i] = float32(i) / 45
	}
	benchLoop(b, func() error {
		_, err := wire.EncodeOIPResponse(r, "mnist")
		return err
	})
}
