package ingress

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// HTTPStatus is the HTTP status of an error code.
func HTTPStatus(code wire.Code) int {
	switch code {
	case wire.CodeInvalidInput:
		return http.StatusBadRequest
	case wire.CodeDuplicate:
		return http.StatusConflict
	case wire.CodeOverloaded:
		return http.StatusTooManyRequests
	case wire.CodeDeadlineExceeded:
		return http.StatusGatewayTimeout
	case wire.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// handler routes the Open Inference Protocol v2 endpoints. {model} is the
// pipeline name; versions are accepted and ignored (a pipeline has one).
// Unknown routes and methods are answered with the OIP error body (404,
// 405 with Allow), like every other error.
func (in *ingress) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/health/live", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"live": true})
	})
	mux.HandleFunc("GET /v2/health/ready", in.httpReady)
	mux.HandleFunc("GET /v2", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"name": "cascadeserve", "version": "1", "extensions": []string{"binary_tensor_data"}})
	})
	for _, prefix := range []string{"/v2/models/{model}", "/v2/models/{model}/versions/{version}"} {
		mux.HandleFunc("GET "+prefix, in.httpMetadata)
		mux.HandleFunc("GET "+prefix+"/ready", in.httpModelReady)
		mux.HandleFunc("POST "+prefix+"/infer", in.httpInfer)
	}
	return jsonErrors(mux)
}

// jsonErrors serves mux, answering the requests it has no route for (404)
// or no such method for (405, with its Allow header) with the OIP error
// body instead of Go's plain text.
func jsonErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		switch rec.status {
		case http.StatusMethodNotAllowed:
			allow := rec.header.Get("Allow")
			w.Header().Set("Allow", allow)
			writeError(w, rec.status, wire.Errorf(wire.CodeInvalidInput, "method %s is not allowed on %s (allowed: %s)", r.Method, truncate(r.URL.Path, 200), allow))
		default:
			writeError(w, http.StatusNotFound, wire.Errorf(wire.CodeInvalidInput, "no such endpoint: %s %s", r.Method, truncate(r.URL.Path, 200)))
		}
	})
}

// statusRecorder keeps the status and headers a handler writes; the body
// is dropped.
type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header         { return s.header }
func (s *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusRecorder) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
}

func (in *ingress) httpReady(w http.ResponseWriter, _ *http.Request) {
	status := http.StatusOK
	if !in.serving() {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, map[string]bool{"ready": status == http.StatusOK})
}

// knownModel answers 404 and returns false when the path names another
// pipeline.
func (in *ingress) knownModel(w http.ResponseWriter, r *http.Request) bool {
	if m := r.PathValue("model"); m != in.cfg.Pipeline {
		writeError(w, http.StatusNotFound, wire.Errorf(wire.CodeInvalidInput, "unknown model %q: this ingress serves %q", m, in.cfg.Pipeline))
		return false
	}
	return true
}

// httpModelReady answers the OIP model ready endpoint: {"name", "ready"},
// 200 when ready, else 503.
func (in *ingress) httpModelReady(w http.ResponseWriter, r *http.Request) {
	if !in.knownModel(w, r) {
		return
	}
	status := http.StatusOK
	if !in.serving() {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, struct {
		Name  string `json:"name"`
		Ready bool   `json:"ready"`
	}{in.cfg.Pipeline, status == http.StatusOK})
}

// modelMetadata is the OIP v2 model metadata response, with CascadeServe's
// extensions: the ladder, the gears and the gear in force.
type modelMetadata struct {
	Name     string           `json:"name"`
	Versions []string         `json:"versions"`
	Platform string           `json:"platform"`
	Inputs   []tensorMetadata `json:"inputs"`
	Outputs  []tensorMetadata `json:"outputs"`
	Ladder   []string         `json:"ladder"`
	Gears    []string         `json:"gears"`
	Gear     wire.GearState   `json:"gear"`
	Cascade  []plan.Stage     `json:"cascade"`
	SLOP95Ms float64          `json:"slo_p95_ms"`
}

type tensorMetadata struct {
	Name       string         `json:"name"`
	Datatype   string         `json:"datatype"`
	Shape      []int64        `json:"shape"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

// httpMetadata answers the OIP model metadata: shapes lead with the batch
// axis, -1 (any number of items).
func (in *ingress) httpMetadata(w http.ResponseWriter, r *http.Request) {
	if !in.knownModel(w, r) {
		return
	}
	c := in.ctl.Load()
	if c == nil {
		writeError(w, http.StatusServiceUnavailable, wire.Errorf(wire.CodeUnavailable, "no plan yet"))
		return
	}
	p := c.Plan
	input := tensorMetadata{Name: p.Input.Name, Datatype: wire.FP32, Shape: append([]int64{-1}, p.Input.Shape...)}
	if p.Input.UINT8Scale > 0 {
		input.Parameters = map[string]any{"accepted_datatypes": "FP32,UINT8", "uint8_scale": p.Input.UINT8Scale}
	}
	gears := make([]string, len(p.Gears))
	for i, g := range p.Gears {
		gears[i] = g.ID
	}
	writeJSON(w, http.StatusOK, modelMetadata{
		Name: p.Pipeline, Versions: []string{wire.ModelVersion}, Platform: "cascadeserve",
		Inputs: []tensorMetadata{input},
		Outputs: []tensorMetadata{
			{Name: wire.OutputLabel, Datatype: wire.INT64, Shape: []int64{-1}},
			{Name: wire.OutputConfidence, Datatype: wire.FP64, Shape: []int64{-1}},
			{Name: wire.OutputProbabilities, Datatype: wire.FP32, Shape: []int64{-1, int64(p.Input.Classes)}, Parameters: map[string]any{"when": "return_probabilities or requested"}},
		},
		Ladder: p.Ladder, Gears: gears, Gear: c.State, Cascade: c.Gear.Cascade, SLOP95Ms: p.SLO.P95Ms,
	})
}

// httpInfer admits one OIP v2 infer request (one item or a batch, JSON or
// with binary tensor data) and waits for its result.
func (in *ingress) httpInfer(w http.ResponseWriter, r *http.Request) {
	start := in.now()
	in.metrics.inFlight.Inc()
	defer in.metrics.inFlight.Dec()
	if !in.knownModel(w, r) {
		in.countRejected(doorHTTP, wire.Errorf(wire.CodeInvalidInput, "unknown model"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, in.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			err := wire.Errorf(wire.CodeInvalidInput, "body exceeds the limit of %d bytes", in.cfg.MaxBodyBytes)
			in.countRejected(doorHTTP, err)
			writeError(w, http.StatusRequestEntityTooLarge, err)
			return
		}
		err := wire.Errorf(wire.CodeInvalidInput, "read body: %v", err)
		in.countRejected(doorHTTP, err)
		writeError(w, http.StatusBadRequest, err)
		return
	}
	var req wire.Request
	opts, key, hasKey, err := decodeOIP(body, r.Header.Get(wire.HeaderInferenceHeaderContentLength), r.Header.Values(wire.HeaderIdempotencyKey), &req)
	if err != nil {
		in.countRejected(doorHTTP, err)
		writeError(w, HTTPStatus(wire.CodeOf(err)), err)
		return
	}
	res, replayed, err := in.answer(r.Context(), doorHTTP, &req, start, key, hasKey)
	if err != nil {
		if r.Context().Err() != nil {
			in.logger.Debug("HTTP caller went away before its result", "id", req.ID)
			return
		}
		writeError(w, HTTPStatus(wire.CodeOf(err)), err)
		return
	}
	a := in.oipAnswer(res, &req, opts)
	if replayed {
		w.Header().Set(wire.HeaderIdempotentReplayed, "true")
	}
	if a.code != "" {
		w.Header().Set(wire.HeaderError, string(a.code))
	}
	if a.status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	if a.tail != nil {
		w.Header().Set("Content-Type", wire.ContentTypeOctetStream)
		w.Header().Set(wire.HeaderInferenceHeaderContentLength, strconv.Itoa(len(a.header)))
	} else {
		w.Header().Set("Content-Type", wire.ContentTypeJSON)
	}
	w.WriteHeader(a.status)
	_, _ = w.Write(a.header)
	_, _ = w.Write(a.tail)
	in.metrics.e2e.WithLabelValues(doorHTTP).Observe(in.now().Sub(start).Seconds())
}

// decodeOIP decodes an OIP infer request with the values of its headers
// Inference-Header-Content-Length (binary tensor data; empty: none) and
// Idempotency-Key (none, or one valid key). Errors are invalid_input.
func decodeOIP(body []byte, headerLen string, keys []string, req *wire.Request) (opts wire.OIPResponseOptions, key string, hasKey bool, err error) {
	n := -1
	if headerLen != "" {
		v, err := strconv.Atoi(strings.TrimSpace(headerLen))
		if err != nil || v < 0 {
			return opts, "", false, wire.Errorf(wire.CodeInvalidInput, "%s %q: want a byte count", wire.HeaderInferenceHeaderContentLength, truncate(headerLen, 32))
		}
		n = v
	}
	if opts, err = wire.DecodeOIPInfer(body, n, req); err != nil {
		return opts, "", false, err
	}
	key, hasKey, err = idempotencyKey(keys)
	return opts, key, hasKey, err
}

// oipReply is an OIP answer: status, the JSON body or header, the binary
// data after it (nil: none) and the error code of an error answer.
type oipReply struct {
	status       int
	header, tail []byte
	code         wire.Code
}

// oipAnswer writes a result as the OIP answer to req: an error result as
// the error body with its status; a batch whose every item failed as the
// first item's error; else the response with the requested outputs, rows
// in input order.
func (in *ingress) oipAnswer(res *wire.Result, req *wire.Request, opts wire.OIPResponseOptions) oipReply {
	failed := res.Error
	if res.Error == nil && len(res.Items) > 0 {
		failed = res.Items[0].Error
		for i := range res.Items {
			if res.Items[i].Error == nil {
				failed = nil
				break
			}
		}
		if failed != nil {
			failed = &wire.Error{Code: failed.Code, Message: fmt.Sprintf("every item of the batch failed; item 0: %s", failed.Message)}
		}
	}
	if failed != nil {
		b, _ := json.Marshal(wire.OIPError{ID: res.ID, Error: failed.Message, Code: failed.Code}) // cannot fail: strings
		return oipReply{status: HTTPStatus(failed.Code), header: b, code: failed.Code}
	}
	if c := in.ctl.Load(); c != nil {
		opts.BatchAxis = hasBatchAxis(req.Input, c.Plan.Input)
		opts.Classes = c.Plan.Input.Classes
	}
	header, tail, err := wire.EncodeOIPResult(res, in.cfg.Pipeline, opts)
	if err != nil {
		e := wire.Errorf(wire.CodeInternal, "%v", err)
		return oipReply{status: http.StatusInternalServerError, header: wire.EncodeOIPError(e), code: e.Code}
	}
	return oipReply{status: http.StatusOK, header: header, tail: tail}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, wire.EncodeOIPError(err)
	}
	w.Header().Set("Content-Type", wire.ContentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// writeError writes {"error","code"} with the given status; overloaded
// answers carry Retry-After.
func writeError(w http.ResponseWriter, status int, err error) {
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", strconv.Itoa(1))
	}
	w.Header().Set(wire.HeaderError, string(wire.CodeOf(err)))
	w.Header().Set("Content-Type", wire.ContentTypeJSON)
	w.WriteHeader(status)
	_, _ = w.Write(wire.EncodeOIPError(err))
}
