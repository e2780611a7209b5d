package ingress

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/cascadeserve/cascadeserve/internal/wire"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
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
func (in *ingress) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/health/live", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"live": true})
	})
	mux.HandleFunc("GET /v2/health/ready", in.httpReady)
	mux.HandleFunc("GET /v2", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"name": "cascadeserve", "version": "1", "extensions": []string{}})
	})
	for _, prefix := range []string{"/v2/models/{model}", "/v2/models/{model}/versions/{version}"} {
		mux.HandleFunc("GET "+prefix, in.httpMetadata)
		mux.HandleFunc("GET "+prefix+"/ready", in.httpModelReady)
		mux.HandleFunc("POST "+prefix+"/infer", in.httpInfer)
	}
	return mux
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

func (in *ingress) httpModelReady(w http.ResponseWriter, r *http.Request) {
	if in.knownModel(w, r) {
		in.httpReady(w, r)
	}
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
	input := tensorMetadata{Name: p.Input.Name, Datatype: wire.FP32, Shape: p.Input.Shape}
	if p.Input.UINT8Scale > 0 {
		input.Parameters = map[string]any{"accepted_datatypes": "FP32,UINT8", "uint8_scale": p.Input.UINT8Scale}
	}
	gears := make([]string, len(p.Gears))
	for i, g := range p.Gears {
		gears[i] = g.ID
	}
	writeJSON(w, http.StatusOK, modelMetadata{
		Name: p.Pipeline, Versions: []string{"1"}, Platform: "cascadeserve",
		Inputs: []tensorMetadata{input},
		Outputs: []tensorMetadata{
			{Name: wire.OutputLabel, Datatype: wire.INT64, Shape: []int64{1}},
			{Name: wire.OutputConfidence, Datatype: wire.FP64, Shape: []int64{1}},
			{Name: wire.OutputProbabilities, Datatype: wire.FP32, Shape: []int64{int64(p.Input.Classes)}, Parameters: map[string]any{"when": "return_probabilities"}},
		},
		Ladder: p.Ladder, Gears: gears, Gear: c.State, Cascade: c.Gear.Cascade, SLOP95Ms: p.SLO.P95Ms,
	})
}

// httpInfer admits one OIP v2 infer request and waits for its result.
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
	if err := wire.DecodeOIPRequest(body, &req); err != nil {
		in.countRejected(doorHTTP, err)
		writeError(w, HTTPStatus(wire.CodeOf(err)), err)
		return
	}
	subject, ch, cancel := in.replies.register()
	defer cancel()
	ad, err := in.admit(admission{door: doorHTTP, req: &req, start: start, replyTo: subject})
	if err != nil {
		in.countRejected(doorHTTP, err)
		writeError(w, HTTPStatus(wire.CodeOf(err)), err)
		return
	}
	in.countAdmitted(doorHTTP)
	res, err := in.await(r.Context(), ch, ad.item)
	if err != nil {
		if r.Context().Err() != nil {
			in.logger.Debug("HTTP caller went away before its result", "id", ad.item.ID)
			return
		}
		writeError(w, HTTPStatus(wire.CodeOf(err)), err)
		return
	}
	if res.Error != nil {
		writeError(w, HTTPStatus(res.Error.Code), res.Error)
	} else {
		b, err := wire.EncodeOIPResponse(res, in.cfg.Pipeline)
		if err != nil {
			writeError(w, http.StatusInternalServerError, wire.Errorf(wire.CodeInternal, "%v", err))
			return
		}
		w.Header().Set("Content-Type", wire.ContentTypeJSON)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b)
	}
	in.metrics.e2e.WithLabelValues(doorHTTP).Observe(in.now().Sub(start).Seconds())
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
