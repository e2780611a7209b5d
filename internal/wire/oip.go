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
//	 "parameters": {"timeout_ms": 500, "client": "web", "return_probabilities": true}}
//
// Exactly one input is read (its name is not checked: the pipeline has one
// input). Data is row-major, flat or nested to any depth; FP32 and UINT8
// datatypes are read. Parameters besides timeout_ms, deadline_unix_ms, client
// and return_probabilities are ignored, as are requested "outputs".
//
// The response carries three outputs, "label" (INT64 [1]), "confidence"
// (FP64 [1]) and, if asked for, "probabilities" (FP32 [classes]), and the
// cascade's bookkeeping in parameters (OIPResultParameters). Errors are
// {"error": "...", "code": "..."} with a Code.

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
)

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
	Outputs    []json.RawMessage          `json:"outputs,omitempty"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
}

// OIPTensor is one input or output tensor of an OIP body; Data is the raw
// JSON array (flat or nested, row-major).
type OIPTensor struct {
	Name       string                     `json:"name"`
	Shape      []int64                    `json:"shape"`
	Datatype   string                     `json:"datatype"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
	Data       json.RawMessage            `json:"data"`
}

// DecodeOIPRequest decodes an OIP v2 infer request body into r. It checks
// the body's structure (one input, known datatype, numeric data of the
// datatype's range, typed parameters); it does not know the pipeline, so
// shape and size are checked by the ingress. Errors are *Error with
// CodeInvalidInput.
func DecodeOIPRequest(b []byte, r *Request) error {
	var o OIPRequest
	if err := json.Unmarshal(b, &o); err != nil {
		return Errorf(CodeInvalidInput, "decode JSON request: %v", err)
	}
	*r = Request{V: Version, ID: o.ID}
	if len(o.Inputs) != 1 {
		return Errorf(CodeInvalidInput, "request has %d inputs, want exactly 1", len(o.Inputs))
	}
	in := o.Inputs[0]
	size := DatatypeSize(in.Datatype)
	if size == 0 {
		return Errorf(CodeInvalidInput, "input %q: datatype %q not supported (want %s or %s)", in.Name, in.Datatype, FP32, UINT8)
	}
	if len(in.Data) == 0 {
		return Errorf(CodeInvalidInput, "input %q has no data", in.Name)
	}
	// Pre-size from the shape, but never beyond what the body could hold
	// (every value takes at least two bytes: a digit and a separator), so a
	// lying shape cannot make us allocate.
	hint := Tensor{Shape: in.Shape}.Elements()
	if limit := int64(len(in.Data)/2 + 1); hint < 0 || hint > limit {
		hint = limit
	}
	data, err := parseOIPData(in.Data, in.Datatype, make([]byte, 0, hint*int64(size)))
	if err != nil {
		return Errorf(CodeInvalidInput, "input %q: %v", in.Name, err)
	}
	r.Input = Tensor{Datatype: in.Datatype, Shape: in.Shape, Data: data}
	for k, v := range o.Parameters {
		if err := r.setParam(k, v); err != nil {
			return Errorf(CodeInvalidInput, "parameter %q: %v", k, err)
		}
	}
	return nil
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

// OIPResponse is the OIP v2 infer response body.
type OIPResponse struct {
	ModelName    string              `json:"model_name"`
	ModelVersion string              `json:"model_version,omitempty"`
	ID           string              `json:"id"`
	Parameters   OIPResultParameters `json:"parameters"`
	Outputs      []OIPOutput         `json:"outputs"`
}

// OIPOutput is one output tensor of a response; Data is a flat JSON array.
type OIPOutput struct {
	Name     string          `json:"name"`
	Shape    []int64         `json:"shape"`
	Datatype string          `json:"datatype"`
	Data     json.RawMessage `json:"data"`
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

// EncodeOIPResponse writes a successful result as an OIP v2 response for
// model (the pipeline name). A result carrying an Error is written as the
// error body with the result's id: {"id", "error", "code"}.
func EncodeOIPResponse(r *Result, model string) ([]byte, error) {
	if r.Error != nil {
		b, _ := json.Marshal(OIPError{ID: r.ID, Error: r.Error.Message, Code: r.Error.Code}) // cannot fail: strings
		return b, nil
	}
	visits := make([]string, len(r.Visits))
	for i, v := range r.Visits {
		visits[i] = v.Model
	}
	resp := OIPResponse{
		ModelName: model,
		ID:        r.ID,
		Parameters: OIPResultParameters{
			Pipeline:          r.Pipeline,
			Client:            r.Client,
			AnsweredBy:        r.AnsweredBy,
			Gear:              r.Gear,
			AdmittedGear:      r.AdmittedGear,
			Degraded:          r.Degraded,
			Visits:            strings.Join(visits, ","),
			Stages:            len(r.Visits),
			LatencyMs:         float64(r.TotalNs) / 1e6,
			AdmittedUnixNano:  r.AdmittedUnixNano,
			CompletedUnixNano: r.CompletedUnixNano,
		},
		Outputs: []OIPOutput{
			{Name: OutputLabel, Shape: []int64{1}, Datatype: INT64, Data: strconv.AppendInt([]byte{'['}, int64(r.Label), 10)},
			{Name: OutputConfidence, Shape: []int64{1}, Datatype: FP64},
		},
	}
	resp.Outputs[0].Data = append(resp.Outputs[0].Data, ']')
	c := r.Confidence
	if math.IsNaN(c) || math.IsInf(c, 0) {
		return nil, fmt.Errorf("encode OIP response %q: confidence %v", r.ID, c)
	}
	resp.Outputs[1].Data = append(strconv.AppendFloat([]byte{'['}, c, 'g', -1, 64), ']')
	if r.Probabilities != nil {
		data := make([]byte, 0, 2+12*len(r.Probabilities))
		data = append(data, '[')
		for i, p := range r.Probabilities {
			if math.IsNaN(float64(p)) || math.IsInf(float64(p), 0) {
				return nil, fmt.Errorf("encode OIP response %q: probability %v", r.ID, p)
			}
			if i > 0 {
				data = append(data, ',')
			}
			data = strconv.AppendFloat(data, float64(p), 'g', -1, 32)
		}
		data = append(data, ']')
		resp.Outputs = append(resp.Outputs, OIPOutput{Name: OutputProbabilities, Shape: []int64{int64(len(r.Probabilities))}, Datatype: FP32, Data: data})
	}
	b, err := json.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("encode OIP response %q: %w", r.ID, err)
	}
	return b, nil
}

// DecodeOIPResponse reads an OIP v2 response body (or an error body) back
// into a Result, for clients of the HTTP and JSON NATS doors. An error body
// yields a Result whose Error is set.
func DecodeOIPResponse(b []byte, r *Result) error {
	var probe struct {
		ID    string  `json:"id"`
		Error *string `json:"error"`
		Code  Code    `json:"code"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return fmt.Errorf("decode OIP response: %w", err)
	}
	if probe.Error != nil {
		code := probe.Code
		if code == "" {
			code = CodeInternal
		}
		*r = Result{V: Version, ID: probe.ID, Error: &Error{Code: code, Message: *probe.Error}}
		return nil
	}
	var o OIPResponse
	if err := json.Unmarshal(b, &o); err != nil {
		return fmt.Errorf("decode OIP response: %w", err)
	}
	p := o.Parameters
	*r = Result{
		V: Version, ID: o.ID, Pipeline: p.Pipeline, Client: p.Client,
		AnsweredBy: p.AnsweredBy, Gear: p.Gear, AdmittedGear: p.AdmittedGear, Degraded: p.Degraded,
		TotalNs:          int64(math.Round(p.LatencyMs * 1e6)),
		AdmittedUnixNano: p.AdmittedUnixNano, CompletedUnixNano: p.CompletedUnixNano,
	}
	if p.Visits != "" {
		for m := range strings.SplitSeq(p.Visits, ",") {
			r.Visits = append(r.Visits, Visit{Model: m})
		}
	}
	seen := map[string]bool{}
	for _, out := range o.Outputs {
		seen[out.Name] = true
		switch out.Name {
		case OutputLabel:
			var v []int64
			if err := json.Unmarshal(out.Data, &v); err != nil || len(v) != 1 {
				return fmt.Errorf("decode OIP response: output %q: want one integer", out.Name)
			}
			r.Label = int(v[0])
		case OutputConfidence:
			var v []float64
			if err := json.Unmarshal(out.Data, &v); err != nil || len(v) != 1 {
				return fmt.Errorf("decode OIP response: output %q: want one number", out.Name)
			}
			r.Confidence = v[0]
		case OutputProbabilities:
			var v []float32
			if err := json.Unmarshal(out.Data, &v); err != nil {
				return fmt.Errorf("decode OIP response: output %q: %w", out.Name, err)
			}
			r.Probabilities = v
		}
	}
	if !seen[OutputLabel] || !seen[OutputConfidence] {
		return fmt.Errorf("decode OIP response: outputs %q and %q are required", OutputLabel, OutputConfidence)
	}
	return nil
}
