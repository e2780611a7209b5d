package wire_test

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// TestDecodeOIPInferBinary: with Inference-Header-Content-Length, an input
// with binary_data_size reads its raw little-endian bytes after the JSON
// header; requested outputs and their binary flags come back as options.
func TestDecodeOIPInferBinary(t *testing.T) {
	header := `{"id":"b1","inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],` +
		`"outputs":[{"name":"label","parameters":{"binary_data":true}},{"name":"confidence"}],"parameters":{"timeout_ms":100}}`
	raw := binary.LittleEndian.AppendUint32(nil, math.Float32bits(1.5))
	raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(-2))
	var r wire.Request
	opts, err := wire.DecodeOIPInfer(append([]byte(header), raw...), len(header), &r)
	if err != nil {
		t.Fatal(err)
	}
	want := wire.Request{V: wire.Version, ID: "b1", Input: wire.FP32Tensor([]int64{2}, []float32{1.5, -2}), TimeoutMs: 100, Outputs: []string{"label", "confidence"}}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("got  %+v\nwant %+v", r, want)
	}
	if !reflect.DeepEqual(opts.Outputs, []wire.OIPOutputChoice{{Name: "label", Binary: true}, {Name: "confidence"}}) || opts.BinaryAll {
		t.Fatalf("options %+v", opts)
	}
	// binary_data_output makes every output binary unless it says otherwise.
	header = `{"inputs":[{"name":"x","shape":[2],"datatype":"UINT8","parameters":{"binary_data_size":2}}],` +
		`"outputs":[{"name":"label"},{"name":"confidence","parameters":{"binary_data":false}}],"parameters":{"binary_data_output":true}}`
	opts, err = wire.DecodeOIPInfer(append([]byte(header), 7, 9), len(header), &r)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Input.Data) != "\x07\x09" || !opts.BinaryAll || !reflect.DeepEqual(opts.Outputs, []wire.OIPOutputChoice{{Name: "label", Binary: true}, {Name: "confidence"}}) {
		t.Fatalf("request %+v options %+v", r, opts)
	}
}

func TestDecodeOIPInferErrors(t *testing.T) {
	bin := `{"inputs":[{"name":"x","shape":[2],"datatype":"UINT8","parameters":{"binary_data_size":2}}]}`
	negative := `{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","parameters":{"binary_data_size":-1}}]}`
	for _, tc := range []struct {
		name, body string
		headerLen  int
		wantMsg    string
	}{
		{"unknown output", `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"logits"}]}`, -1, "unknown output"},
		{"output twice", `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"label"},{"name":"label"}]}`, -1, "twice"},
		{"classification", `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"label","parameters":{"classification":3}}]}`, -1, "not supported"},
		{"binary_data not a bool", `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"label","parameters":{"binary_data":"yes"}}]}`, -1, "boolean"},
		{"binary without the header", bin, -1, "no Inference-Header-Content-Length"},
		{"header length past the body", bin, len(bin) + 5, "exceeds the body"},
		{"binary data short", bin + "\x01", len(bin), "exceeds the 1 bytes"},
		{"binary data left over", bin + "\x01\x02\x03", len(bin), "1 bytes of binary data after"},
		{"data and binary", `{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[1],"parameters":{"binary_data_size":1}}]}` + "\x01", len(`{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[1],"parameters":{"binary_data_size":1}}]}`), "both data"},
		{"negative size", negative, len(negative), "byte count"},
		{"header cut in the JSON", bin, 10, "decode JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := wire.DecodeOIPInfer([]byte(tc.body), tc.headerLen, &wire.Request{})
			if wire.CodeOf(err) != wire.CodeInvalidInput || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want invalid_input mentioning %q", err, tc.wantMsg)
			}
		})
	}
}

// TestMsgpackRequestOutputs: msgpack requests name outputs too; an unknown
// one is invalid_input, probabilities implies return_probabilities.
func TestMsgpackRequestOutputs(t *testing.T) {
	c := wire.NewCodec()
	b, err := c.EncodeRequest(&wire.Request{Input: wire.FP32Tensor([]int64{1}, []float32{1}), Outputs: []string{"probabilities"}})
	if err != nil {
		t.Fatal(err)
	}
	var r wire.Request
	if err := wire.DecodeRequest(b, &r); err != nil || !r.ReturnProbabilities {
		t.Fatalf("decode: %v %+v", err, r)
	}
	b, _ = c.EncodeRequest(&wire.Request{Input: wire.FP32Tensor([]int64{1}, []float32{1}), Outputs: []string{"logits"}})
	if err := wire.DecodeRequest(b, &r); wire.CodeOf(err) != wire.CodeInvalidInput {
		t.Fatalf("unknown output: %v", err)
	}
}

// TestOIPBatchResponse: a batch's result is N rows in order; a failed row
// has label -1 and its error in parameters.errors; DecodeOIPResponse reads
// it back into Items.
func TestOIPBatchResponse(t *testing.T) {
	ok := sampleResult()
	batch := &wire.Result{ID: "req-1", Pipeline: "mnist", Client: "web", TotalNs: 2e6, Items: []wire.Result{
		*ok, {ID: "req-1", Error: wire.Errorf(wire.CodeInvalidInput, "value 0 is NaN")}, *ok,
	}}
	b, tail, err := wire.EncodeOIPResult(batch, "mnist", wire.OIPResponseOptions{BatchAxis: true})
	if err != nil || tail != nil {
		t.Fatalf("encode: %v, %d binary bytes", err, len(tail))
	}
	var raw struct {
		ModelVersion string `json:"model_version"`
		Outputs      []struct {
			Name  string    `json:"name"`
			Shape []int64   `json:"shape"`
			Data  []float64 `json:"data"`
		} `json:"outputs"`
		Parameters struct {
			Items  []map[string]any    `json:"items"`
			Errors []wire.OIPItemError `json:"errors"`
		} `json:"parameters"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.ModelVersion != "1" || len(raw.Outputs) != 3 {
		t.Fatalf("response %s", b)
	}
	if o := raw.Outputs[0]; o.Name != "label" || !reflect.DeepEqual(o.Shape, []int64{3}) || !reflect.DeepEqual(o.Data, []float64{7, -1, 7}) {
		t.Errorf("label %+v", o)
	}
	if o := raw.Outputs[2]; o.Name != "probabilities" || !reflect.DeepEqual(o.Shape, []int64{3, 3}) || len(o.Data) != 9 || o.Data[3] != 0 {
		t.Errorf("probabilities %+v", o)
	}
	if len(raw.Parameters.Items) != 3 || raw.Parameters.Items[1] != nil || raw.Parameters.Items[2]["answered_by"] != "big" ||
		len(raw.Parameters.Errors) != 1 || raw.Parameters.Errors[0].Index != 1 || raw.Parameters.Errors[0].Code != wire.CodeInvalidInput {
		t.Errorf("parameters %+v", raw.Parameters)
	}
	var out wire.Result
	if err := wire.DecodeOIPResponse(b, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Items) != 3 || out.Items[0].Label != 7 || out.Items[0].AnsweredBy != "big" || len(out.Items[2].Probabilities) != 3 ||
		out.Items[1].Error == nil || out.Items[1].Error.Code != wire.CodeInvalidInput {
		t.Fatalf("decoded %+v", out)
	}
}

// TestOIPResultOutputsAndBinary: only the requested outputs, in the
// requested order; binary ones as little-endian bytes after the header.
func TestOIPResultOutputsAndBinary(t *testing.T) {
	r := sampleResult()
	b, tail, err := wire.EncodeOIPResult(r, "mnist", wire.OIPResponseOptions{BatchAxis: true, Outputs: []wire.OIPOutputChoice{
		{Name: "probabilities", Binary: true}, {Name: "label"}, {Name: "confidence", Binary: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Outputs []struct {
			Name       string           `json:"name"`
			Shape      []int64          `json:"shape"`
			Parameters map[string]int   `json:"parameters"`
			Data       *json.RawMessage `json:"data"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.Outputs) != 3 || raw.Outputs[0].Name != "probabilities" || raw.Outputs[1].Name != "label" || raw.Outputs[2].Name != "confidence" {
		t.Fatalf("outputs %s", b)
	}
	if p := raw.Outputs[0]; p.Data != nil || p.Parameters["binary_data_size"] != 12 || !reflect.DeepEqual(p.Shape, []int64{1, 3}) {
		t.Errorf("probabilities %+v", p)
	}
	if l := raw.Outputs[1]; l.Data == nil || string(*l.Data) != "[7]" {
		t.Errorf("label %s", b)
	}
	if len(tail) != 12+8 || math.Float32frombits(binary.LittleEndian.Uint32(tail[8:])) != 0.93 ||
		math.Float64frombits(binary.LittleEndian.Uint64(tail[12:])) != 0.93 {
		t.Errorf("binary tail % x", tail)
	}
}
