package ingress_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

type answer struct {
	status int
	res    *wire.Result
}

// TestGracefulShutdown: cancelling Run closes intake at once (HTTP stops
// accepting, request-reply has no responder) while requests in flight
// still get their results; then Run returns nil.
func TestGracefulShutdown(t *testing.T) {
	e := startEnv(t, natsbus.TopologyConfig{})
	ti := e.ready(t, func(c *ingress.Config) { c.ShutdownTimeout = 30 * time.Second })
	gate := make(chan struct{})
	e.respondAfter(t, "small", gate)
	nc := e.srv.Connect(t)

	httpDone := make(chan answer, 1)
	go func() {
		status, res, _ := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", "[1,1,1,1]", ""))
		httpDone <- answer{status, res}
	}()
	natsDone := make(chan answer, 1)
	go func() {
		res, _ := natsRequest(t, nc, []byte(oipBody("", "FP32", "[2,2]", "[1,0,0,0]", "")), true)
		natsDone <- answer{0, res}
	}()
	natstest.WaitFor(t, "both requests admitted", 10*time.Second, func() bool {
		return ti.counter(t, "cascade_ingress_requests_total", "door", "http", "outcome", "admitted") == 1 &&
			ti.counter(t, "cascade_ingress_requests_total", "door", "nats", "outcome", "admitted") == 1
	})

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
	select {
	case <-ti.stopped:
		if ti.err != nil {
			t.Fatalf("Run = %v", ti.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after the in-flight requests finished")
	}
}

// TestShutdownBound: requests whose results do not come by the shutdown
// bound are answered unavailable, and Run returns.
func TestShutdownBound(t *testing.T) {
	e := startEnv(t, natsbus.TopologyConfig{})
	ti := e.ready(t, func(c *ingress.Config) { c.ShutdownTimeout = 200 * time.Millisecond })
	never := make(chan struct{})
	e.respondAfter(t, "small", never)
	nc := e.srv.Connect(t)

	httpDone := make(chan answer, 1)
	go func() {
		status, res, _ := httpInfer(t, ti.url, pipeline, oipBody("", "FP32", "[2,2]", "[1,1,1,1]", `{"timeout_ms":60000}`))
		httpDone <- answer{status, res}
	}()
	natsDone := make(chan answer, 1)
	go func() {
		res, hdr := natsRequest(t, nc, []byte(oipBody("", "FP32", "[2,2]", "[1,1,1,1]", `{"timeout_ms":60000}`)), true)
		if hdr != string(wire.CodeUnavailable) {
			t.Errorf("Cascade-Error %q", hdr)
		}
		natsDone <- answer{0, res}
	}()
	natstest.WaitFor(t, "both requests admitted", 10*time.Second, func() bool {
		return ti.counter(t, "cascade_ingress_requests_total", "door", "http", "outcome", "admitted") == 1 &&
			ti.counter(t, "cascade_ingress_requests_total", "door", "nats", "outcome", "admitted") == 1
	})
	ti.cancel()
	if a := <-httpDone; a.status != http.StatusServiceUnavailable || a.res.Error == nil || a.res.Error.Code != wire.CodeUnavailable {
		t.Errorf("HTTP at the bound: %d %+v", a.status, a.res.Error)
	}
	if a := <-natsDone; a.res.Error == nil || a.res.Error.Code != wire.CodeUnavailable {
		t.Errorf("NATS at the bound: %+v", a.res.Error)
	}
	select {
	case <-ti.stopped:
		if ti.err != nil {
			t.Fatalf("Run = %v", ti.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after the shutdown bound")
	}
}

// TestDeadlineWhileWaiting: a caller whose result never comes is answered
// deadline_exceeded after its deadline plus the reply grace.
func TestDeadlineWhileWaiting(t *testing.T) {
	e := startEnv(t, natsbus.TopologyConfig{})
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
