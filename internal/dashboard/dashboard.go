// Package dashboard serves the controller's live dashboard: one HTML page
// that needs nothing from outside the process (no CDN: its script and
// charts are inline), a JSON snapshot of the state and a stream of
// server-sent events. The controller publishes a State at every decision
// tick; the Hub keeps the latest one and a bounded gear timeline and fans
// states out to the connected pages.
//
// Routes (Mount): GET /dashboard (the page), GET /dashboard/state (the
// latest State with its History, JSON), GET /dashboard/events (text/event-
// stream: one "state" event per publish, the latest at once on connect).
package dashboard

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// State is what the dashboard shows at one moment. Numbers that may be
// unknown (no results in the window yet) are pointers: null in JSON.
type State struct {
	Pipeline string `json:"pipeline"`
	// AtUnixMs is when the controller made this state.
	AtUnixMs int64 `json:"at_ms"`
	// SLOP95Ms is the plan's p95 objective.
	SLOP95Ms float64 `json:"slo_p95_ms"`
	// Gear is the gear in force; Decision the controller's latest word on
	// it (why it holds or moved), which may be newer than Gear.Reason.
	Gear     Gear   `json:"gear"`
	Decision string `json:"decision"`
	Pinned   bool   `json:"pinned"`
	// Gears are all of the plan's gears with their max_qps as planned and
	// as scaled to the live capacity.
	Gears []GearLimit `json:"gears"`
	// OfferedQPS is the intake rate over the plan's rate window;
	// Ingresses the ingress instances reporting it.
	OfferedQPS float64 `json:"offered_qps"`
	Ingresses  int     `json:"ingresses"`
	// Backlog is per model of the plan, ladder order.
	Backlog []Backlog `json:"backlog"`
	// Served are the workers' results over the statistics window.
	Served Served `json:"served"`
	// Capacity is the live capacity behind the gear decision.
	Capacity Capacity `json:"capacity"`
	// Workers are the live stage workers.
	Workers []Worker `json:"workers"`
	// History is the gear timeline, oldest first; only in
	// /dashboard/state (events carry the state of one moment).
	History []Point `json:"history,omitempty"`
}

// Gear is the gear in force.
type Gear struct {
	ID    string `json:"id"`
	Index int    `json:"index"`
	// Reason is why the controller entered it; SinceUnixMs when.
	Reason      string  `json:"reason"`
	SinceUnixMs int64   `json:"since_ms"`
	Cascade     []Stage `json:"cascade"`
	// MaxQPS is the plan's; ScaledMaxQPS the same scaled to the live
	// capacity (what the controller compares the load with).
	MaxQPS       float64 `json:"max_qps"`
	ScaledMaxQPS float64 `json:"scaled_max_qps"`
	// PredictedAccuracy and PredictedP95Ms are the planner's predictions.
	PredictedAccuracy float64 `json:"predicted_accuracy"`
	PredictedP95Ms    float64 `json:"predicted_p95_ms"`
	MaxBatch          int     `json:"max_batch"`
	MaxDelayMs        float64 `json:"max_delay_ms"`
}

// Stage is one model of a cascade; the last stage has no threshold.
type Stage struct {
	Model     string   `json:"model"`
	Threshold *float64 `json:"threshold,omitempty"`
}

// GearLimit is one gear's load limit.
type GearLimit struct {
	ID                string  `json:"id"`
	MaxQPS            float64 `json:"max_qps"`
	ScaledMaxQPS      float64 `json:"scaled_max_qps"`
	PredictedAccuracy float64 `json:"predicted_accuracy"`
}

// Backlog is one model's queue.
type Backlog struct {
	Model      string `json:"model"`
	Pending    int64  `json:"pending"`
	AckPending int64  `json:"ack_pending"`
}

// Served summarises the results of the statistics window.
type Served struct {
	WindowS   float64  `json:"window_s"`
	QPS       float64  `json:"qps"`
	ErrorQPS  float64  `json:"error_qps"`
	Results   uint64   `json:"results"`
	Degraded  uint64   `json:"degraded"`
	P50Ms     *float64 `json:"p50_ms"`
	P95Ms     *float64 `json:"p95_ms"`
	MeanMs    *float64 `json:"mean_ms"`
	MeanConf  *float64 `json:"mean_confidence"`
	Mix       []Share  `json:"mix"`
	TotalSeen uint64   `json:"total_results"`
	// TotalAnswered counts answers per model since the controller started
	// hearing the workers (departed workers included).
	TotalAnswered map[string]uint64 `json:"total_answered"`
}

// Share is one model's part of the window's answers.
type Share struct {
	Model          string   `json:"model"`
	Answers        uint64   `json:"answers"`
	Share          float64  `json:"share"`
	MeanConfidence *float64 `json:"mean_confidence"`
}

// Capacity is the live capacity in runners.
type Capacity struct {
	PlanRunners int  `json:"plan_runners"`
	LiveRunners int  `json:"live_runners"`
	Known       bool `json:"known"`
	// Factor scales every gear's max_qps (live / plan, 1 while unknown).
	Factor float64 `json:"factor"`
}

// Worker is one live stage worker.
type Worker struct {
	Instance  string   `json:"instance"`
	Models    []string `json:"models"`
	Runners   int      `json:"runners"`
	Threads   int      `json:"threads"`
	Provider  string   `json:"provider"`
	Gear      string   `json:"gear"`
	Results   uint64   `json:"results"`
	UptimeS   float64  `json:"uptime_s"`
	LastBeatS float64  `json:"last_beat_s"`
}

// Point is one moment of the gear timeline.
type Point struct {
	AtUnixMs   int64    `json:"t"`
	Gear       int      `json:"gear"`
	GearID     string   `json:"gear_id"`
	OfferedQPS float64  `json:"offered"`
	ServedQPS  float64  `json:"served"`
	P95Ms      *float64 `json:"p95_ms"`
	// Runners is the live capacity; null until a worker was heard.
	Runners *int `json:"runners"`
	// MaxQPS is the gear's max_qps scaled to the live capacity.
	MaxQPS float64 `json:"max"`
}

// PointOf is the timeline point of s.
func PointOf(s *State) Point {
	p := Point{AtUnixMs: s.AtUnixMs, Gear: s.Gear.Index, GearID: s.Gear.ID, OfferedQPS: s.OfferedQPS,
		ServedQPS: s.Served.QPS, P95Ms: s.Served.P95Ms, MaxQPS: s.Gear.ScaledMaxQPS}
	if s.Capacity.Known {
		r := s.Capacity.LiveRunners
		p.Runners = &r
	}
	return p
}

// Timeline bounds: one point per second at most (plus every gear change),
// ten minutes of them.
const (
	pointEvery = time.Second
	maxPoints  = 600
)

//go:embed page.html
var page []byte

// Hub holds the latest state and timeline and fans states out to the
// event streams. Its methods are safe for concurrent use.
type Hub struct {
	mu      sync.Mutex
	latest  []byte // JSON of the latest State, without History
	state   *State
	history []Point
	subs    map[chan []byte]struct{}
	closed  bool
	done    chan struct{}
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{subs: map[chan []byte]struct{}{}, done: make(chan struct{})}
}

// Publish makes s the latest state, extends the timeline and sends s to
// every connected event stream (a stream that has not taken the previous
// state yet skips it: pages want the newest, not every one).
func (h *Hub) Publish(s State) {
	s.History = nil
	body, err := json.Marshal(&s)
	if err != nil {
		return // only NaN or ±Inf could fail; the controller sends none
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.latest, h.state = body, &s
	p := PointOf(&s)
	if n := len(h.history); n == 0 || p.AtUnixMs-h.history[n-1].AtUnixMs >= pointEvery.Milliseconds() || p.Gear != h.history[n-1].Gear {
		h.history = append(h.history, p)
		if len(h.history) > maxPoints {
			h.history = append(h.history[:0], h.history[len(h.history)-maxPoints:]...)
		}
	}
	for c := range h.subs {
		select {
		case c <- body:
		default:
			select { // replace the stale state with the newest
			case <-c:
			default:
			}
			select {
			case c <- body:
			default:
			}
		}
	}
}

// Snapshot returns the latest state with the timeline, or false before the
// first Publish.
func (h *Hub) Snapshot() (State, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == nil {
		return State{}, false
	}
	s := *h.state
	s.History = append([]Point(nil), h.history...)
	return s, true
}

// Close ends every event stream; later publishes are dropped.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
}

// Mount adds the dashboard's routes to mux.
func (h *Hub) Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET /dashboard", h.servePage)
	mux.HandleFunc("GET /dashboard/{$}", h.servePage)
	mux.HandleFunc("GET /dashboard/state", h.serveState)
	mux.HandleFunc("GET /dashboard/events", h.serveEvents)
}

func (h *Hub) servePage(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	// The page loads nothing from elsewhere; say so to the browser too.
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:")
	w.Write(page)
}

func (h *Hub) serveState(w http.ResponseWriter, _ *http.Request) {
	s, ok := h.Snapshot()
	if !ok {
		http.Error(w, "no state yet: the controller has not completed a decision", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	json.NewEncoder(w).Encode(&s)
}

// keepAlive is how often an idle event stream gets a comment line, so
// proxies do not time it out.
const keepAlive = 15 * time.Second

func (h *Hub) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	c := make(chan []byte, 1)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		http.Error(w, "dashboard closed", http.StatusServiceUnavailable)
		return
	}
	h.subs[c] = struct{}{}
	if h.latest != nil {
		c <- h.latest
	}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.subs, c)
		h.mu.Unlock()
	}()

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	if err := rc.Flush(); err != nil {
		return
	}
	ka := time.NewTicker(keepAlive)
	defer ka.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.done:
			return
		case body := <-c:
			if _, err := fmt.Fprintf(w, "event: state\ndata: %s\n\n", body); err != nil {
				return
			}
		case <-ka.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}
