package ingress_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/internal/stageworker"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// TestEndToEndMNIST serves MNIST test images through the ingress and the
// real stage worker (ONNX Runtime) over every door: HTTP FP32 and UINT8,
// NATS msgpack and JSON, and durable jobs in msgpack and JSON (whose
// results come back as JSON). Every request gets exactly one answer, the
// same image gets the same label on every door, and the answers are
// mostly right.
func TestEndToEndMNIST(t *testing.T) {
	if _, err := onnxrt.FindLibrary(os.Getenv); err != nil {
		if os.Getenv("CASCADE_REQUIRE_ORT") == "1" {
			t.Fatal(err)
		}
		t.Skipf("%v (run scripts/install-onnxruntime.sh)", err)
	}
	models := []string{"linear", "mlp_small", "mlp"}
	for _, m := range models {
		if _, err := mnist.Model(m); err != nil {
			t.Skipf("MNIST model not available: %v", err)
		}
	}
	set, err := mnist.TestImages()
	if err != nil {
		t.Fatal(err)
	}
	p := &plan.Plan{
		Version: plan.FormatVersion, Pipeline: "mnist", SLO: plan.SLO{P95Ms: 50}, Capacity: 1, Confidence: plan.MetricMargin,
		Input:  plan.Input{Name: "input", Datatype: "FP32", Shape: mnist.ItemShape(), Classes: mnist.Classes, UINT8Scale: 1.0 / 255},
		Ladder: models, Hysteresis: plan.DefaultHysteresis(),
		Gears: []plan.Gear{{ID: "g", MaxQPS: 100, Batching: plan.Batching{MaxBatch: 16, MaxDelayMs: 1},
			Cascade: []plan.Stage{{Model: "linear", Threshold: 0.8}, {Model: "mlp_small", Threshold: 0.8}, {Model: "mlp"}},
			Runners: map[string]float64{"linear": 0.3, "mlp_small": 0.3, "mlp": 0.4}}},
	}
	for _, m := range models {
		p.Models = append(p.Models, plan.Model{Name: m, File: "onnx/" + m + ".onnx",
			Profile: plan.Profile{Points: []plan.ProfilePoint{{Batch: 1, LatencyMs: 0.05}, {Batch: 64, LatencyMs: 1}}}})
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := natstest.Start(t)
	ctx := context.Background()
	kv := srv.Topology(t, p, natsbus.TopologyConfig{})
	natstest.PutPlan(t, kv, p)

	wcfg, err := stageworker.ConfigFromEnv(map[string]string{"CASCADE_PIPELINE": "mnist", "CASCADE_METRICS_ADDR": "", "CASCADE_WORKER_RUNNERS": "1"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan error, 1)
	wnc := srv.Connect(t) // closed after the worker stops (cleanups run last-in first-out)
	go func() {
		wdone <- stageworker.Run(wctx, wcfg, stageworker.Deps{Deps: servicemain.Deps{Logger: testLogger(t), Registerer: prometheus.NewRegistry(), Conn: wnc}, Models: mnist.Files()})
	}()
	t.Cleanup(func() {
		wcancel()
		if err := <-wdone; err != nil {
			t.Errorf("stageworker.Run = %v", err)
		}
	})
	e := &testEnv{srv: srv, plan: p, kv: kv}
	ti := e.startIngress(t, func(c *ingress.Config) { c.Pipeline = "mnist"; c.DefaultTimeout = 20 * time.Second })
	ti.waitReady(t)
	nc := srv.Connect(t)

	const n = 20
	labels := make([][]int, n) // per image: label from each door
	var mu sync.Mutex
	record := func(i int, door string, res *wire.Result) {
		t.Helper()
		if res.Error != nil {
			t.Errorf("image %d via %s: %v", i, door, res.Error)
			return
		}
		mu.Lock()
		labels[i] = append(labels[i], res.Label)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	// viaHTTP posts image i's body and records its answer as door's.
	viaHTTP := func(i int, door, body string) {
		defer wg.Done()
		status, res, raw := httpInfer(t, ti.url, "mnist", body)
		if status != 200 {
			t.Errorf("image %d via %s: %d %s", i, door, status, raw)
			return
		}
		record(i, door, res)
	}
	for i := range n {
		img := set.Item(i)
		fp := make([]string, len(img))
		u8 := make([]string, len(img))
		pix := make([]byte, len(img))
		for j, v := range img {
			fp[j] = strconv.FormatFloat(float64(v), 'g', -1, 32)
			pix[j] = byte(math.Round(float64(v) * 255))
			u8[j] = strconv.Itoa(int(pix[j]))
		}
		shape := "[1,28,28]"
		wg.Add(4)
		go viaHTTP(i, "http-fp32", oipBody("", "FP32", shape, "["+strings.Join(fp, ",")+"]", ""))
		go viaHTTP(i, "http-uint8", oipBody("", "UINT8", "[1,1,28,28]", "["+strings.Join(u8, ",")+"]", ""))
		go func() {
			defer wg.Done()
			res, _ := natsRequestTo(t, nc, "mnist", encodeRequest(t, &wire.Request{Input: wire.FP32Tensor(mnist.ItemShape(), img)}), false)
			record(i, "nats-msgpack", res)
		}()
		go func() {
			defer wg.Done()
			res, _ := natsRequestTo(t, nc, "mnist", []byte(oipBody("", "UINT8", shape, "["+strings.Join(u8, ",")+"]", "")), true)
			record(i, "nats-json", res)
		}()
		e.publishJob(t, "e2e", encodeRequest(t, &wire.Request{ID: fmt.Sprintf("img-%d", i), Input: wire.Tensor{Datatype: wire.UINT8, Shape: mnist.ItemShape(), Data: pix}}), false, "")
		e.publishJob(t, "e2e-json", []byte(oipBody(fmt.Sprintf("json-%d", i), "UINT8", shape, "["+strings.Join(u8, ",")+"]", "")), true, "")
	}
	wg.Wait()
	natstest.WaitFor(t, "job results", 60*time.Second, func() bool { return len(e.results(t, "e2e")) >= n })
	jobs := e.results(t, "e2e")
	if len(jobs) != n {
		t.Errorf("%d job results, want %d", len(jobs), n)
	}
	for _, r := range jobs {
		var i int
		if _, err := fmt.Sscanf(r.ID, "img-%d", &i); err != nil || i < 0 || i >= n {
			t.Errorf("job result id %q", r.ID)
			continue
		}
		record(i, "jobs", r)
	}
	// Jobs sent as JSON get the OIP JSON response on the results stream,
	// written by the stage worker.
	natstest.WaitFor(t, "JSON job results", 60*time.Second, func() bool { return len(e.resultMsgs(t, "e2e-json")) >= n })
	jsonJobs := e.resultMsgs(t, "e2e-json")
	if len(jsonJobs) != n {
		t.Errorf("%d JSON job results, want %d", len(jsonJobs), n)
	}
	for _, m := range jsonJobs {
		if ct := m.Header.Get(wire.HeaderContentType); ct != wire.ContentTypeJSON {
			t.Errorf("JSON job result with Content-Type %q", ct)
			continue
		}
		var r wire.Result
		if err := wire.DecodeOIPResponse(m.Data, &r); err != nil {
			t.Errorf("JSON job result %s: %v", m.Data, err)
			continue
		}
		var i int
		if _, err := fmt.Sscanf(r.ID, "json-%d", &i); err != nil || i < 0 || i >= n || !isJobResultMsgID("mnist", m.Header.Get(wire.HeaderMsgID)) {
			t.Errorf("JSON job result id %q, %s %q", r.ID, wire.HeaderMsgID, m.Header.Get(wire.HeaderMsgID))
			continue
		}
		record(i, "jobs-json", &r)
	}
	correct, total := 0, 0
	for i, ls := range labels {
		if len(ls) != 6 {
			t.Errorf("image %d: %d answers, want 6", i, len(ls))
		}
		for _, l := range ls {
			total++
			if l == int(set.Labels[i]) {
				correct++
			}
		}
	}
	t.Logf("%d of %d answers right", correct, total)
	if correct < total*8/10 {
		t.Errorf("only %d of %d answers right", correct, total)
	}
	var md struct {
		Gear wire.GearState `json:"gear"`
	}
	if getJSON(t, ti.url+"/v2/models/mnist", &md); md.Gear.Gear != "g" {
		t.Errorf("metadata gear %+v", md.Gear)
	}
}
