package wire

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"strconv"
	"strings"
)

// Open Inference Protocol v2 (KServe / Triton) JSON bodies.
//
// The same infer request body is accepted over HTTP
// (POST /v2/models/{pipeline}/infer) and over NATS (InferSubject or
// JobsSubject with header Content-Type: application/json), so humans need one
// schema:
//
//	{"id": "req-1",
//	 "inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "FP32",
//	             "data": [0.0, 0.1, ...]}],
//	 "outputs": [{"name": "label"}, {"name": "probabilities"}],
//	 "parameters": {"timeout_ms": 500, "client": "web", "return_probabilities": true}}
//
// Exactly one input is read (its name is not checked: the pipeline has one
// input). Data is row-major, flat or nested to any depth; FP32 and UINT8
// datatypes are read. An input of shape [N, item shape...] is a batch of N
// items. Parameters besides timeout_ms, deadline_unix_ms, client,
// return_probabilities and binary_data_output are ignored.
//
// The binary tensor data extension is read: with the header
// Inference-Header-Content-Length: n the body's first n bytes are the JSON
// header, and an input whose parameters carry binary_data_size takes that
// many raw little-endian bytes from the rest, in input order, instead of
// "data".
//
// The response carries the outputs "label" (INT64), "confidence" (FP64) and,
// if asked for, "probabilities" (FP32), or only those the request names in
// "outputs" (an unknown name is invalid_input), and the cascade's
// bookkeeping in parameters (OIPResultParameters; for a batch,
// OIPBatchParameters with the per-row errors). Outputs asked for with
// parameters.binary_data (or every output, with the request parameter
// binary_data_output) are written as binary data after the JSON header
// (EncodeOIPResult). Errors are {"error": "...", "code": "..."} with a Code.

// Datatypes of OIP response outputs.
const (
	INT64 = "INT64"
	FP64  = "FP64"
)

// Names of the outputs of an OIP response.
const (
	OutputLabel         = "label"
	OutputConfidence    = "confidence"
	OutputProbabilities = "probabilities"
)

// Parameter names read from an OIP request's parameters.
const (
	ParamTimeoutMs           = "timeout_ms"
	ParamDeadlineUnixMs      = "deadline_unix_ms"
	ParamClient              = "client"
	ParamReturnProbabilities = "return_probabilities"
	// ParamBinaryDataOutput (request) asks for every output as binary data.
	ParamBinaryDataOutput = "binary_data_output"
	// ParamBinaryData (requested output) asks for that output as binary
	// data; ParamBinaryDataSize (input or response output) is the size in
	// bytes of a tensor sent as binary data.
	ParamBinaryData     = "binary_data"
	ParamBinaryDataSize = "binary_data_size"
)

// ModelVersion is the version every response names: a pipeline has one.
const ModelVersion = "1"

// IsJSON reports whether a Content-Type header value selects the JSON (OIP)
// body; parameters such as "; charset=utf-8" are allowed.
func IsJSON(contentType string) bool {
	if contentType == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return strings.HasPrefix(strings.ToLower(strings.TrimSpace(contentType)), ContentTypeJSON)
	}
	return mt == ContentTypeJSON
}

// DecodeRequestBody decodes a request body as OIP JSON when contentType
// selects JSON (IsJSON), else as msgpack. Errors are *Error with
// CodeInvalidInput.
func DecodeRequestBody(contentType string, b []byte, r *Request) error {
	if IsJSON(contentType) {
		return DecodeOIPRequest(b, r)
	}
	return DecodeRequest(b, r)
}

// OIPRequest is the OIP v2 infer request body. Data is kept raw and parsed
// by DecodeOIPRequest into a Tensor's bytes without going through []any.
type OIPRequest struct {
	ID         string                     `json:"id,omitempty"`
	Inputs     []OIPTensor                `json:"inputs"`
	Outputs    []OIPRequestOutput         `json:"outputs,omitempty"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
}

// OIPRequestOutput is one requested output of an OIP request.
type OIPRequestOutput struct {
	Name       string                     `json:"name"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
}

// OIPTensor is one input or output tensor of an OIP body; Data is the raw
// JSON array (flat or nested, row-major), absent for a tensor sent as
// binary data.
type OIPTensor struct {
	Name       string                     `json:"name"`
	Shape      []int64                    `json:"shape"`
	Datatype   string                     `json:"datatype"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
	Data       json.RawMessage            `json:"data,omitempty"`
}

// OIPResponseOptions says how a result is written as an OIP response
// (EncodeOIPResult).
type OIPResponseOptions struct {
	// Outputs are the outputs to write, in order, each as JSON data or as
	// binary data. Empty: label, confidence and, when the result has them,
	// probabilities, as binary data if BinaryAll.
	Outputs []OIPOutputChoice
	// BinaryAll writes the default outputs as binary data (the request
	// parameter binary_data_output without named outputs).
	BinaryAll bool
	// BatchAxis: the request's input had a leading batch axis, so
	// probabilities are [N, classes]; without it (one item of the item
	// shape) they are [classes]. Label and confidence are [N] either way.
	BatchAxis bool
	// Classes is the length of a probabilities row when no row of the
	// result has probabilities (every row failed); 0: such rows are empty.
	Classes int
}

// OIPOutputChoice is one output to write and whether as binary data.
type OIPOutputChoice struct {
	Name   string
	Binary bool
}

// DecodeOIPRequest decodes an OIP v2 infer request body (all JSON) into r.
// See DecodeOIPInfer.
func DecodeOIPRequest(b []byte, r *Request) error {
	_, err := DecodeOIPInfer(b, -1, r)
	return err
}

// DecodeOIPInfer decodes an OIP v2 infer request into r and returns how it
// wants its response written. headerLen is the value of the header
// Inference-Header-Content-Length (HeaderInferenceHeaderContentLength), or
// -1 without it: then the whole body is JSON; else the body's first
// headerLen bytes are the JSON header and the rest the binary data of the
// inputs whose parameters carry binary_data_size, in input order, with no
// byte left over.
//
// It checks the body's structure (one input, known datatype, numeric data
// of the datatype's range, typed parameters, known output names); it does
// not know the pipeline, so shape and size are checked by the ingress.
// Errors are *Error with CodeInvalidInput.
func DecodeOIPInfer(body []byte, headerLen int, r *Request) (OIPResponseOptions, error) {
	header, tail, err := splitOIPBody(body, headerLen)
	if err != nil {
		return OIPResponseOptions{}, err
	}
	var o OIPRequest
	if err := json.Unmarshal(header, &o); err != nil {
		return OIPResponseOptions{}, Errorf(CodeInvalidInput, "decode JSON request: %v", err)
	}
	*r = Request{V: Version, ID: o.ID}
	if len(o.Inputs) != 1 {
		return OIPResponseOptions{}, Errorf(CodeInvalidInput, "request has %d inputs, want exactly 1", len(o.Inputs))
	}
	in := &o.Inputs[0]
	data, tail, err := readOIPInput(in, headerLen >= 0, tail)
	if err != nil {
		return OIPResponseOptions{}, err
	}
	if len(tail) != 0 {
		return OIPResponseOptions{}, Errorf(CodeInvalidInput, "%d bytes of binary data after the inputs' %s", len(tail), ParamBinaryDataSize)
	}
	r.Input = Tensor{Datatype: in.Datatype, Shape: in.Shape, Data: data}
	opts, err := r.readOIPParameters(o.Parameters)
	if err != nil {
		return OIPResponseOptions{}, err
	}
	if err := r.readOIPOutputs(o.Outputs, &opts); err != nil {
		return OIPResponseOptions{}, err
	}
	r.ReturnProbabilities = r.WantsProbabilities()
	return opts, nil
}

// splitOIPBody splits an infer request body into its JSON header and the
// binary data that follows it: headerLen is the value of
// Inference-Header-Content-Length, or -1 for a body that is all JSON (then
// tail is nil). Errors are *Error with CodeInvalidInput.
func splitOIPBody(body []byte, headerLen int) (header, tail []byte, err error) {
	if headerLen < 0 {
		return body, nil, nil
	}
	if headerLen > len(body) {
		return nil, nil, Errorf(CodeInvalidInput, "%s %d exceeds the body's %d bytes", HeaderInferenceHeaderContentLength, headerLen, len(body))
	}
	return body[:headerLen], body[headerLen:], nil
}

// readOIPInput returns the raw little-endian bytes of the request's input:
// taken from the front of tail when its parameters carry binary_data_size
// (allowed only when the body has binary data, hasBinary), else parsed
// from its JSON data. It returns the rest of tail. Errors are *Error with
// CodeInvalidInput.
func readOIPInput(in *OIPTensor, hasBinary bool, tail []byte) (data, rest []byte, err error) {
	size := DatatypeSize(in.Datatype)
	if size == 0 {
		return nil, tail, Errorf(CodeInvalidInput, "input %q: datatype %q not supported (want %s or %s)", in.Name, in.Datatype, FP32, UINT8)
	}
	if raw, ok := in.Parameters[ParamBinaryDataSize]; ok {
		var n int64
		if err := json.Unmarshal(raw, &n); err != nil || n < 0 {
			return nil, tail, Errorf(CodeInvalidInput, "input %q: %s %s: want a byte count", in.Name, ParamBinaryDataSize, truncate(raw, 32))
		}
		switch {
		case !hasBinary:
			return nil, tail, Errorf(CodeInvalidInput, "input %q has %s but the request has no %s header", in.Name, ParamBinaryDataSize, HeaderInferenceHeaderContentLength)
		case len(in.Data) != 0 && string(in.Data) != "null":
			return nil, tail, Errorf(CodeInvalidInput, "input %q has both data and %s", in.Name, ParamBinaryDataSize)
		case n > int64(len(tail)):
			return nil, tail, Errorf(CodeInvalidInput, "input %q: %s %d exceeds the %d bytes of binary data", in.Name, ParamBinaryDataSize, n, len(tail))
		}
		return tail[:n:n], tail[n:], nil
	}
	if len(in.Data) == 0 {
		return nil, tail, Errorf(CodeInvalidInput, "input %q has no data", in.Name)
	}
	// Pre-size from the shape, but never beyond what the body could hold
	// (every value takes at least two bytes: a digit and a separator), so a
	// lying shape cannot make us allocate.
	hint := Tensor{Shape: in.Shape}.Elements()
	if limit := int64(len(in.Data)/2 + 1); hint < 0 || hint > limit {
		hint = limit
	}
	if data, err = parseOIPData(in.Data, in.Datatype, make([]byte, 0, hint*int64(size))); err != nil {
		return nil, tail, Errorf(CodeInvalidInput, "input %q: %v", in.Name, err)
	}
	return data, tail, nil
}

// readOIPParameters sets r's fields from an infer request's parameters
// (setParam) and returns the response options they ask for
// (binary_data_output). Errors are *Error with CodeInvalidInput.
func (r *Request) readOIPParameters(params map[string]json.RawMessage) (OIPResponseOptions, error) {
	var opts OIPResponseOptions
	for k, v := range params {
		if k == ParamBinaryDataOutput {
			if err := json.Unmarshal(v, &opts.BinaryAll); err != nil {
				return OIPResponseOptions{}, Errorf(CodeInvalidInput, "parameter %q: want a boolean", k)
			}
			continue
		}
		if err := r.setParam(k, v); err != nil {
			return OIPResponseOptions{}, Errorf(CodeInvalidInput, "parameter %q: %v", k, err)
		}
	}
	return opts, nil
}

// readOIPOutputs sets r.Outputs and opts.Outputs from an infer request's
// requested outputs, each binary as its binary_data parameter says
// (default opts.BinaryAll), and checks them (CheckOutputs). Errors are
// *Error with CodeInvalidInput.
func (r *Request) readOIPOutputs(outputs []OIPRequestOutput, opts *OIPResponseOptions) error {
	for _, out := range outputs {
		c := OIPOutputChoice{Name: out.Name, Binary: opts.BinaryAll}
		for k, v := range out.Parameters {
			switch k {
			case ParamBinaryData:
				if err := json.Unmarshal(v, &c.Binary); err != nil {
					return Errorf(CodeInvalidInput, "output %q: parameter %q: want a boolean", truncate([]byte(out.Name), 64), k)
				}
			case "classification":
				return Errorf(CodeInvalidInput, "output %q: parameter %q is not supported", truncate([]byte(out.Name), 64), k)
			}
		}
		r.Outputs = append(r.Outputs, out.Name)
		opts.Outputs = append(opts.Outputs, c)
	}
	return CheckOutputs(r.Outputs)
}

// maxParamMs bounds millisecond parameters (about year 33658 as a Unix
// time) so they convert to int64 nanoseconds without overflow.
const maxParamMs = 1e15

func (r *Request) setParam(key string, v json.RawMessage) error {
	switch key {
	case ParamTimeoutMs, ParamDeadlineUnixMs:
		var f float64
		if err := json.Unmarshal(v, &f); err != nil {
			return fmt.Errorf("want a number of milliseconds: %w", err)
		}
		if f < 0 || f > maxParamMs {
			return fmt.Errorf("%v is out of range", f)
		}
		if f != math.Trunc(f) {
			// Truncating 0.5 would mean "no timeout given": the default.
			return fmt.Errorf("%v is not a whole number of milliseconds", f)
		}
		if key == ParamTimeoutMs {
			r.TimeoutMs = int64(f)
		} else {
			r.DeadlineUnixMs = int64(f)
		}
	case ParamClient:
		if err := json.Unmarshal(v, &r.Client); err != nil {
			return fmt.Errorf("want a string: %w", err)
		}
	case ParamReturnProbabilities:
		if err := json.Unmarshal(v, &r.ReturnProbabilities); err != nil {
			return fmt.Errorf("want a boolean: %w", err)
		}
	}
	return nil
}

// parseOIPData appends the values of a JSON array (nested to any depth) of
// numbers to dst as little-endian values of datatype dt. The input is known
// to be valid JSON (json.Unmarshal checked it), so this only walks tokens.
func parseOIPData(raw []byte, dt string, dst []byte) ([]byte, error) {
	depth, seenArray := 0, false
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',':
			i++
		case c == '[':
			depth++
			seenArray = true
			i++
		case c == ']':
			depth--
			i++
		case c == '-' || (c >= '0' && c <= '9'):
			if depth == 0 {
				return dst, fmt.Errorf("data must be an array")
			}
			j := i + 1
			for j < len(raw) && (raw[j] == '.' || raw[j] == 'e' || raw[j] == 'E' || raw[j] == '+' || raw[j] == '-' || (raw[j] >= '0' && raw[j] <= '9')) {
				j++
			}
			var err error
			if dst, err = appendOIPValue(dst, dt, raw[i:j]); err != nil {
				return dst, err
			}
			i = j
		default:
			return dst, fmt.Errorf("data must be an array of numbers, found %q", truncate(raw[i:], 16))
		}
	}
	if !seenArray {
		return dst, fmt.Errorf("data must be an array")
	}
	return dst, nil
}

func appendOIPValue(dst []byte, dt string, tok []byte) ([]byte, error) {
	switch dt {
	case FP32:
		f, err := strconv.ParseFloat(string(tok), 32)
		if err != nil {
			return dst, fmt.Errorf("value %s is not an FP32 number", tok)
		}
		return binary.LittleEndian.AppendUint32(dst, math.Float32bits(float32(f))), nil
	case UINT8:
		f, err := strconv.ParseFloat(string(tok), 64)
		if err != nil || f < 0 || f > 255 || f != math.Trunc(f) {
			return dst, fmt.Errorf("value %s is not a UINT8 (an integer 0-255)", tok)
		}
		return append(dst, byte(f)), nil
	}
	return dst, fmt.Errorf("datatype %q not supported", dt)
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// EncodeOIPRequest writes r as an OIP v2 infer request body (flat data), the
// inverse of DecodeOIPRequest; inputName names the input tensor.
func EncodeOIPRequest(r *Request, inputName string) ([]byte, error) {
	data, err := appendOIPData(nil, r.Input)
	if err != nil {
		return nil, fmt.Errorf("encode OIP request: %w", err)
	}
	params := map[string]any{}
	if r.TimeoutMs != 0 {
		params[ParamTimeoutMs] = r.TimeoutMs
	}
	if r.DeadlineUnixMs != 0 {
		params[ParamDeadlineUnixMs] = r.DeadlineUnixMs
	}
	if r.Client != "" {
		params[ParamClient] = r.Client
	}
	if r.ReturnProbabilities {
		params[ParamReturnProbabilities] = true
	}
	shape := r.Input.Shape
	if shape == nil {
		shape = []int64{}
	}
	body := struct {
		ID         string         `json:"id,omitempty"`
		Inputs     []OIPTensor    `json:"inputs"`
		Parameters map[string]any `json:"parameters,omitempty"`
	}{ID: r.ID, Inputs: []OIPTensor{{Name: inputName, Shape: shape, Datatype: r.Input.Datatype, Data: data}}, Parameters: params}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode OIP request: %w", err)
	}
	return b, nil
}

// appendOIPData writes a tensor's values as a flat JSON array. FP32 values
// are written with the shortest representation that reads back exactly.
func appendOIPData(dst []byte, t Tensor) ([]byte, error) {
	dst = append(dst, '[')
	switch t.Datatype {
	case FP32:
		if len(t.Data)%4 != 0 {
			return nil, fmt.Errorf("FP32 data has %d bytes, not a multiple of 4", len(t.Data))
		}
		for i := 0; i < len(t.Data); i += 4 {
			f := math.Float32frombits(binary.LittleEndian.Uint32(t.Data[i:]))
			if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
				return nil, fmt.Errorf("value %v cannot be written as JSON", f)
			}
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendFloat(dst, float64(f), 'g', -1, 32)
		}
	case UINT8:
		for i, v := range t.Data {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendUint(dst, uint64(v), 10)
		}
	default:
		return nil, fmt.Errorf("datatype %q not supported", t.Datatype)
	}
	return append(dst, ']'), nil
}

// OIPResponse is the OIP v2 infer response body. Parameters is an
// OIPResultParameters, or an OIPBatchParameters for a batch.
type OIPResponse struct {
	ModelName    string      `json:"model_name"`
	ModelVersion string      `json:"model_version,omitempty"`
	ID           string      `json:"id"`
	Parameters   any         `json:"parameters"`
	Outputs      []OIPOutput `json:"outputs"`
}

// OIPOutput is one output tensor of a response: Data is a flat JSON array,
// or absent when the tensor is binary data (Parameters binary_data_size).
type OIPOutput struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
}

// OIPResultParameters is the cascade's bookkeeping of a result, carried in
// the response's parameters (OIP parameter values are scalars, so the
// models visited are one comma-separated string).
type OIPResultParameters struct {
	Pipeline     string `json:"pipeline,omitempty"`
	Client       string `json:"client,omitempty"`
	AnsweredBy   string `json:"answered_by,omitempty"`
	Gear         string `json:"gear,omitempty"`
	AdmittedGear string `json:"admitted_gear,omitempty"`
	Degraded     bool   `json:"degraded"`
	// Visits lists the models the item went through, comma-separated, in
	// order; Stages is their number.
	Visits string `json:"visits"`
	Stages int    `json:"stages"`
	// LatencyMs is the time from admission to the result.
	LatencyMs         float64 `json:"latency_ms"`
	AdmittedUnixNano  int64   `json:"admitted_ns,omitempty"`
	CompletedUnixNano int64   `json:"completed_ns,omitempty"`
}

// OIPBatchParameters are the parameters of a batch's response: the
// request's end-to-end times, each row's bookkeeping (null for a row that
// failed) and the rows that failed, whose label is -1.
type OIPBatchParameters struct {
	Pipeline          string                 `json:"pipeline,omitempty"`
	Client            string                 `json:"client,omitempty"`
	LatencyMs         float64                `json:"latency_ms"`
	AdmittedUnixNano  int64                  `json:"admitted_ns,omitempty"`
	CompletedUnixNano int64                  `json:"completed_ns,omitempty"`
	Items             []*OIPResultParameters `json:"items"`
	Errors            []OIPItemError         `json:"errors,omitempty"`
}

// OIPItemError is the typed error of one row of a batch.
type OIPItemError struct {
	Index   int    `json:"index"`
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// OIPError is the body of every error answer over HTTP or JSON NATS. ID is
// the request's id when the error is a request's result (EncodeOIPResponse:
// results read from the results stream must say which job they answer).
type OIPError struct {
	ID    string `json:"id,omitempty"`
	Error string `json:"error"`
	Code  Code   `json:"code"`
}

// EncodeOIPError writes err as {"error": message, "code": code}; errors that
// are not *Error get CodeInternal.
func EncodeOIPError(err error) []byte {
	e := OIPError{Error: err.Error(), Code: CodeOf(err)}
	var we *Error
	if errors.As(err, &we) {
		e.Error = we.Message
	}
	b, _ := json.Marshal(e) // cannot fail: two strings
	return b
}

// EncodeOIPResponse writes a result as an OIP v2 response for model (the
// pipeline name) with the default outputs, all JSON: EncodeOIPResult with
// zero options.
func EncodeOIPResponse(r *Result, model string) ([]byte, error) {
	b, _, err := EncodeOIPResult(r, model, OIPResponseOptions{})
	return b, err
}

// resultParameters is the bookkeeping of one answered result.
func resultParameters(r *Result) *OIPResultParameters {
	visits := make([]string, len(r.Visits))
	for i, v := range r.Visits {
		visits[i] = v.Model
	}
	return &OIPResultParameters{
		Pipeline: r.Pipeline, Client: r.Client, AnsweredBy: r.AnsweredBy, Gear: r.Gear, AdmittedGear: r.AdmittedGear,
		Degraded: r.Degraded, Visits: strings.Join(visits, ","), Stages: len(r.Visits),
		LatencyMs: float64(r.TotalNs) / 1e6, AdmittedUnixNano: r.AdmittedUnixNano, CompletedUnixNano: r.CompletedUnixNano,
	}
}

// EncodeOIPResult writes a result as an OIP v2 response for model (the
// pipeline name): the JSON body or header and, when some output is binary
// data, the bytes that follow it (else nil). A result carrying an Error is
// written as the error body with the result's id: {"id", "error", "code"}.
//
// A batch's result (Items) is written as N rows in input order: label
// INT64 [N], confidence FP64 [N], probabilities FP32 [N, classes]; a row
// that failed has label -1, confidence 0, probabilities 0 and its error in
// parameters.errors (OIPBatchParameters). One item is written as label
// [1], confidence [1], probabilities [classes] ([1, classes] with
// BatchAxis).
func EncodeOIPResult(r *Result, model string, o OIPResponseOptions) (header, tail []byte, err error) {
	if r.Error != nil {
		b, _ := json.Marshal(OIPError{ID: r.ID, Error: r.Error.Message, Code: r.Error.Code}) // cannot fail: strings
		return b, nil, nil
	}
	rows := []Result{*r}
	resp := OIPResponse{ModelName: model, ModelVersion: ModelVersion, ID: r.ID}
	batch := len(r.Items) > 0
	if batch {
		rows = r.Items
		resp.Parameters = batchParameters(r)
	} else {
		resp.Parameters = resultParameters(r)
	}
	classes, hasProbs := probabilityClasses(rows, o.Classes)
	// Each output's values are built in scratch (on the stack) and copied
	// out at once, so a small response allocates nothing for them.
	var scratch [64]byte
	for _, c := range o.outputChoices(hasProbs) {
		out, values, err := oipOutput(scratch[:0], c.Name, rows, classes, !batch && !o.BatchAxis)
		if err != nil {
			return nil, nil, fmt.Errorf("encode OIP response %q: %w", r.ID, err)
		}
		if c.Binary {
			out.Parameters = map[string]any{ParamBinaryDataSize: len(values)}
			tail = append(tail, values...)
		} else {
			out.Data = appendJSONValues(make([]byte, 0, 2+3*len(values)), out.Datatype, values)
		}
		resp.Outputs = append(resp.Outputs, out)
	}
	b, err := json.Marshal(resp)
	if err != nil {
		return nil, nil, fmt.Errorf("encode OIP response %q: %w", r.ID, err)
	}
	return b, tail, nil
}

// batchParameters is the bookkeeping of a batch's result r: its
// end-to-end times, each answered row's parameters and each failed row's
// error.
func batchParameters(r *Result) OIPBatchParameters {
	p := OIPBatchParameters{Pipeline: r.Pipeline, Client: r.Client, LatencyMs: float64(r.TotalNs) / 1e6,
		AdmittedUnixNano: r.AdmittedUnixNano, CompletedUnixNano: r.CompletedUnixNano, Items: make([]*OIPResultParameters, len(r.Items))}
	for i := range r.Items {
		if e := r.Items[i].Error; e != nil {
			p.Errors = append(p.Errors, OIPItemError{Index: i, Code: e.Code, Message: e.Message})
			continue
		}
		p.Items[i] = resultParameters(&r.Items[i])
	}
	return p
}

// probabilityClasses is the length of a probabilities row: that of the
// first answered row with probabilities (hasProbs), else def.
func probabilityClasses(rows []Result, def int) (classes int, hasProbs bool) {
	for i := range rows {
		if rows[i].Error == nil && rows[i].Probabilities != nil {
			return len(rows[i].Probabilities), true
		}
	}
	return def, false
}

// outputChoices are the outputs to write: o.Outputs, or by default label,
// confidence and, when the result has them, probabilities, binary if
// o.BinaryAll.
func (o *OIPResponseOptions) outputChoices(hasProbs bool) []OIPOutputChoice {
	if len(o.Outputs) > 0 {
		return o.Outputs
	}
	outputs := []OIPOutputChoice{{OutputLabel, o.BinaryAll}, {OutputConfidence, o.BinaryAll}}
	if hasProbs {
		outputs = append(outputs, OIPOutputChoice{OutputProbabilities, o.BinaryAll})
	}
	return outputs
}

// oipOutput is the output name of rows, without its data, and its values
// as little-endian bytes appended to values: one per row, or for
// probabilities a row of classes values per row (shape [classes] when
// flat, a single item sent without a batch axis). A failed row has label
// -1, confidence 0 and probabilities 0. Values that JSON cannot carry
// (NaN, ±Inf) are errors.
func oipOutput(values []byte, name string, rows []Result, classes int, flat bool) (out OIPOutput, _ []byte, err error) {
	out.Name = name
	n := int64(len(rows))
	switch name {
	case OutputLabel:
		out.Datatype, out.Shape = INT64, []int64{n}
		for i := range rows {
			label := int64(rows[i].Label)
			if rows[i].Error != nil {
				label = -1
			}
			values = binary.LittleEndian.AppendUint64(values, uint64(label))
		}
	case OutputConfidence:
		out.Datatype, out.Shape = FP64, []int64{n}
		for i := range rows {
			c := rows[i].Confidence
			if rows[i].Error != nil {
				c = 0
			}
			if math.IsNaN(c) || math.IsInf(c, 0) {
				return out, nil, fmt.Errorf("confidence %v", c)
			}
			values = binary.LittleEndian.AppendUint64(values, math.Float64bits(c))
		}
	case OutputProbabilities:
		out.Datatype, out.Shape = FP32, []int64{n, int64(classes)}
		if flat {
			out.Shape = []int64{int64(classes)}
		}
		for i := range rows {
			p := rows[i].Probabilities
			if rows[i].Error != nil || len(p) != classes {
				p = make([]float32, classes)
			}
			for _, v := range p {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return out, nil, fmt.Errorf("probability %v", v)
				}
				values = binary.LittleEndian.AppendUint32(values, math.Float32bits(v))
			}
		}
	default:
		return out, nil, fmt.Errorf("unknown output %q", name)
	}
	return out, values, nil
}

// appendJSONValues writes little-endian values of datatype dt (INT64,
// FP64 or FP32, known finite) as a flat JSON array.
func appendJSONValues(dst []byte, dt string, values []byte) []byte {
	dst = append(dst, '[')
	size := 8
	if dt == FP32 {
		size = 4
	}
	for i := 0; i+size <= len(values); i += size {
		if i > 0 {
			dst = append(dst, ',')
		}
		switch dt {
		case INT64:
			dst = strconv.AppendInt(dst, int64(binary.LittleEndian.Uint64(values[i:])), 10)
		case FP64:
			dst = strconv.AppendFloat(dst, math.Float64frombits(binary.LittleEndian.Uint64(values[i:])), 'g', -1, 64)
		case FP32:
			dst = strconv.AppendFloat(dst, float64(math.Float32frombits(binary.LittleEndian.Uint32(values[i:]))), 'g', -1, 32)
		}
	}
	return append(dst, ']')
}

// oipResponseBody is what DecodeOIPResponse reads: the union of the single
// and batch parameters.
type oipResponseBody struct {
	ID         string `json:"id"`
	Parameters struct {
		OIPResultParameters
		Items  []*OIPResultParameters `json:"items"`
		Errors []OIPItemError         `json:"errors"`
	} `json:"parameters"`
	Outputs []OIPOutput `json:"outputs"`
}

// DecodeOIPResponse reads an OIP v2 response body (or an error body) back
// into a Result, for clients of the HTTP and JSON NATS doors. An error body
// yields a Result whose Error is set; a batch's response (parameters.items)
// a Result whose Items hold the rows. Outputs sent as binary data are not
// read (use the JSON form).
func DecodeOIPResponse(b []byte, r *Result) error {
	if isErr, err := decodeOIPErrorBody(b, r); isErr || err != nil {
		return err
	}
	var o oipResponseBody
	if err := json.Unmarshal(b, &o); err != nil {
		return fmt.Errorf("decode OIP response: %w", err)
	}
	p := o.Parameters
	batch := p.Items != nil
	cols := oipColumns{n: 1}
	if batch {
		cols.n = len(p.Items)
	}
	if err := cols.read(o.Outputs); err != nil {
		return fmt.Errorf("decode OIP response: %w", err)
	}
	if !batch {
		*r = Result{V: Version, ID: o.ID}
		cols.row(0, &p.OIPResultParameters, r)
		return nil
	}
	n := cols.n
	*r = Result{V: Version, ID: o.ID, Pipeline: p.Pipeline, Client: p.Client,
		TotalNs:          int64(math.Round(p.LatencyMs * 1e6)),
		AdmittedUnixNano: p.AdmittedUnixNano, CompletedUnixNano: p.CompletedUnixNano,
		Items: make([]Result, n)}
	for i := range r.Items {
		r.Items[i] = Result{V: Version, ID: o.ID}
		cols.row(i, p.Items[i], &r.Items[i])
	}
	for _, e := range p.Errors {
		if e.Index < 0 || e.Index >= n {
			return fmt.Errorf("decode OIP response: error of row %d of %d", e.Index, n)
		}
		r.Items[e.Index] = Result{V: Version, ID: o.ID, Error: &Error{Code: e.Code, Message: e.Message}}
	}
	return nil
}

// decodeOIPErrorBody reads b into r when it is an error body
// ({"id", "error", "code"}; no code reads as CodeInternal) and reports
// whether it was one. A body that is not JSON is an error.
func decodeOIPErrorBody(b []byte, r *Result) (bool, error) {
	var probe struct {
		ID    string  `json:"id"`
		Error *string `json:"error"`
		Code  Code    `json:"code"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return false, fmt.Errorf("decode OIP response: %w", err)
	}
	if probe.Error == nil {
		return false, nil
	}
	code := probe.Code
	if code == "" {
		code = CodeInternal
	}
	*r = Result{V: Version, ID: probe.ID, Error: &Error{Code: code, Message: *probe.Error}}
	return true, nil
}

// oipColumns are the outputs of an OIP response of n rows: a label and a
// confidence per row, and a row of probabilities per row; nil for an
// output the response does not carry.
type oipColumns struct {
	n           int
	labels      []int64
	confidences []float64
	probs       []float32
}

// read reads the JSON data of outputs, checking each holds n rows, and
// fails when none of label, confidence and probabilities is there or one
// is binary data.
func (c *oipColumns) read(outputs []OIPOutput) error {
	seen := map[string]bool{}
	for _, out := range outputs {
		seen[out.Name] = true
		if len(out.Data) == 0 {
			return fmt.Errorf("output %q is binary data", out.Name)
		}
		var err error
		switch out.Name {
		case OutputLabel:
			if err = json.Unmarshal(out.Data, &c.labels); err == nil && len(c.labels) != c.n {
				err = fmt.Errorf("%d values for %d rows", len(c.labels), c.n)
			}
		case OutputConfidence:
			if err = json.Unmarshal(out.Data, &c.confidences); err == nil && len(c.confidences) != c.n {
				err = fmt.Errorf("%d values for %d rows", len(c.confidences), c.n)
			}
		case OutputProbabilities:
			if err = json.Unmarshal(out.Data, &c.probs); err == nil && len(c.probs)%c.n != 0 {
				err = fmt.Errorf("%d values for %d rows", len(c.probs), c.n)
			}
		}
		if err != nil {
			return fmt.Errorf("output %q: %w", out.Name, err)
		}
	}
	if !seen[OutputLabel] && !seen[OutputConfidence] && !seen[OutputProbabilities] {
		return fmt.Errorf("none of the outputs %q, %q and %q", OutputLabel, OutputConfidence, OutputProbabilities)
	}
	return nil
}

// row fills dst with row i: its bookkeeping from params (nil for a failed
// row of a batch) and its outputs. Probabilities share the columns'
// memory.
func (c *oipColumns) row(i int, params *OIPResultParameters, dst *Result) {
	if params != nil {
		dst.Pipeline, dst.Client, dst.AnsweredBy, dst.Gear, dst.AdmittedGear, dst.Degraded =
			params.Pipeline, params.Client, params.AnsweredBy, params.Gear, params.AdmittedGear, params.Degraded
		dst.TotalNs = int64(math.Round(params.LatencyMs * 1e6))
		dst.AdmittedUnixNano, dst.CompletedUnixNano = params.AdmittedUnixNano, params.CompletedUnixNano
		if params.Visits != "" {
			for m := range strings.SplitSeq(params.Visits, ",") {
				dst.Visits = append(dst.Visits, Visit{Model: m})
			}
		}
	}
	if c.labels != nil {
		dst.Label = int(c.labels[i])
	}
	if c.confidences != nil {
		dst.Confidence = c.confidences[i]
	}
	if c.probs != nil {
		k := len(c.probs) / c.n
		dst.Probabilities = c.probs[i*k : (i+1)*k : (i+1)*k]
	}
}
