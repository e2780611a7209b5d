package ingress_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// answer is what a request sent by startInFlight got: an HTTP status or, over
// NATS, the Cascade-Error header, and the result.
type answer struct {
	status int
	header string
	res    *wire.Result
}

// startInFlight starts an ingress with the shutdown bound and a responder
// of model small that holds every item until gate is closed. It sends a
// request with input data over HTTP and one with natsData over NATS
// request-reply on nc, both with the OIP parameters params, and returns
// once both are admitted: the ingress, nc, and where the answers arrive.
func startInFlight(t *testing.T, bound time.Duration, gate <-chan struct{}, data, natsData, params string) (ti *testIngress, nc *nats.Conn, httpDone, natsDone <-chan answer) {
	t.Helper()
	e := startEnv(t)
	ti = e.ready(t, func(c *ingress.Config) { c.ShutdownTimeout = bound })
	e.respondAfter(t, "small", gate)
	nc = e.srv.Connect(t)
	h, n := make(chan answer, 1), make(chan answer, 1)
	go func() {
		status, res, _ := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", data, params))
		h <- answer{status: status, res: res}
	}()
	go func() {
		res, hdr := natsRequest(t, nc, []byte(oipBody("", "FP32", "[2,2]", natsData, params)), true)
		n <- answer{header: hdr, res: res}
	}()
	natstest.WaitFor(t, "both requests admitted", 10*time.Second, func() bool {
		return ti.counter(t, "cascade_ingress_requests_total", "door", "http", "outcome", "admitted") == 1 &&
			ti.counter(t, "cascade_ingress_requests_total", "door", "nats", "outcome", "admitted") == 1
	})
	return ti, nc, h, n
}

// TestGracefulShutdown: cancelling Run closes intake at once (HTTP stops
// accepting, request-reply has no responder) while requests in flight
// still get their results; then Run returns nil.
func TestGracefulShutdown(t *testing.T) {
	gate := make(chan struct{})
	ti, nc, httpDone, natsDone := startInFlight(t, 30*time.Second, gate, "[1,1,1,1]", "[1,0,0,0]", "")

	ti.cancel()
	natstest.WaitFor(t, "intake closed", 10*time.Second, func() bool {
		_, err := nc.Request(wire.InferSubject(pipeline), encodeRequest(t, validRequest("")), time.Second)
		return errors.Is(err, nats.ErrNoResponders)
	})
	natstest.WaitFor(t, "HTTP listener closed", 10*time.Second, func() bool {
		resp, err := http.Get(ti.url + "/v2/health/live")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})
	select {
	case <-ti.stopped:
		t.Fatal("Run returned with requests in flight")
	default:
	}

	close(gate)
	if a := <-httpDone; a.status != http.StatusOK || a.res.Label != 4 {
		t.Errorf("in-flight HTTP request: %d %+v", a.status, a.res)
	}
	if a := <-natsDone; a.res.Error != nil || a.res.Label != 1 {
		t.Errorf("in-flight NATS request: %+v", a.res)
	}
	ti.waitStopped(t, 20*time.Second, "the in-flight requests finished")
}

// TestShutdownBound: requests whose results do not come by the shutdown
// bound are answered unavailable, and Run returns.
func TestShutdownBound(t *testing.T) {
	never := make(chan struct{})
	ti, _, httpDone, natsDone := startInFlight(t, 200*time.Millisecond, never, "[1,1,1,1]", "[1,1,1,1]", `{"timeout_ms":60000}`)
	ti.cancel()
	if a := <-httpDone; a.status != http.StatusServiceUnavailable || a.res.Error == nil || a.res.Error.Code != wire.CodeUnavailable {
		t.Errorf("HTTP at the bound: %d %+v", a.status, a.res.Error)
	}
	if a := <-natsDone; a.res.Error == nil || a.res.Error.Code != wire.CodeUnavailable || a.header != string(wire.CodeUnavailable) {
		t.Errorf("NATS at the bound: %+v, Cascade-Error %q", a.res.Error, a.header)
	}
	ti.waitStopped(t, 20*time.Second, "the shutdown bound")
}

// TestDeadlineWhileWaiting: a caller whose result never comes is answered
// deadline_exceeded after its deadline plus the reply grace.
func TestDeadlineWhileWaiting(t *testing.T) {
	e := startEnv(t)
	ti := e.ready(t, func(c *ingress.Config) { c.ReplyGrace = 10 * time.Millisecond })
	// No responder: the item waits in the queue.
	status, res, _ := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", "[1,1,1,1]", `{"timeout_ms":50}`))
	if status != http.StatusGatewayTimeout || res.Error == nil || res.Error.Code != wire.CodeDeadlineExceeded {
		t.Fatalf("%d %+v", status, res.Error)
	}
	nres, hdr := natsRequest(t, e.srv.Connect(t), []byte(oipBody("", "FP32", "[2,2]", "[1,1,1,1]", `{"timeout_ms":50}`)), true)
	if nres.Error == nil || nres.Error.Code != wire.CodeDeadlineExceeded || hdr != "deadline_exceeded" {
		t.Fatalf("%+v %q", nres.Error, hdr)
	}
}
