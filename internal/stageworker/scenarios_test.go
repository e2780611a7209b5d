package stageworker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// admitImages admits images [0,n) of set to model's queue, durable and with
// the test reply subject; edit may change each item.
func admitImages(t *testing.T, e *testEnv, model, admittedGear string, n int, deadline time.Time, edit func(i int, it *wire.Item)) []string {
	t.Helper()
	set := images(t, n)
	var ids []string
	for i := range n {
		it := newItem(e.plan, fmt.Sprintf("img-%d", i), admittedGear, set.Item(i), deadline)
		it.ReplyTo, it.Durable = replySubject, true
		if edit != nil {
			edit(i, it)
		}
		ids = append(ids, it.ID)
		e.admit(t, model, it)
	}
	return ids
}

// admitEnvelopes admits images [0,n) of set to model's queue as the ingress
// does, in envelopes of size items each (Nats-Msg-Id the envelope's ID),
// durable and with the test reply subject.
func admitEnvelopes(t *testing.T, e *testEnv, model, admittedGear string, n, size int, deadline time.Time) []string {
	t.Helper()
	set := images(t, n)
	codec := wire.NewCodec()
	var ids []string
	for start := 0; start < n; start += size {
		env := &wire.Envelope{ID: fmt.Sprintf("env-%d", start/size)}
		for i := start; i < min(start+size, n); i++ {
			it := newItem(e.plan, fmt.Sprintf("img-%d", i), admittedGear, set.Item(i), deadline)
			it.ReplyTo, it.Durable = replySubject, true
			ids = append(ids, it.ID)
			env.Items = append(env.Items, *it)
		}
		b, err := codec.EncodeEnvelope(env)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(wire.ModelSubject(e.plan.Pipeline, model))
		m.Data = b
		m.Header.Set(wire.HeaderMsgID, env.ID)
		if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatalf("admit %s: %v", env.ID, err)
		}
	}
	return ids
}

// TestGearSwitchTwoWorkers switches gears back and forth while two workers
// watch, checks both apply every switch, and logs the apply latency
// (controller write → worker applied) percentiles. There is no timed
// assertion: the numbers are for the report.
func TestGearSwitchTwoWorkers(t *testing.T) {
	gears := switchGears()
	p := testPlan(t, gears)
	e := startEnv(t, p)
	e.setGear(t, "acc")

	type applied struct {
		worker  int
		at      int64
		gear    string
		latency time.Duration
	}
	events := make(chan applied, 1024)
	var workers []*testWorker
	for i := range 2 {
		h := hooks{gearApplied: func(st wire.GearState, lat time.Duration) {
			events <- applied{worker: i, at: st.AtUnixNano, gear: st.Gear, latency: lat}
		}}
		workers = append(workers, e.startWorker(t, func(c *Config) { c.Runners = 1 }, h))
	}
	// Both workers must first apply the initial gear.
	seen := map[int]bool{}
	waitEvents := func(at int64, gear string) []time.Duration {
		t.Helper()
		var lat []time.Duration
		got := map[int]bool{}
		timeout := time.After(30 * time.Second)
		for len(got) < 2 {
			select {
			case ev := <-events:
				if ev.at == at {
					if ev.gear != gear {
						t.Fatalf("worker %d applied %q for a write of %q", ev.worker, ev.gear, gear)
					}
					got[ev.worker] = true
					lat = append(lat, ev.latency)
				}
				seen[ev.worker] = true
			case <-timeout:
				t.Fatalf("gear %q (at %d) applied by %d of 2 workers", gear, at, len(got))
			}
		}
		return lat
	}
	// Drain the initial application (its write time predates the workers).
	natstest.WaitFor(t, "both workers watching", 30*time.Second, func() bool {
		for {
			select {
			case ev := <-events:
				seen[ev.worker] = true
				continue
			default:
			}
			return len(seen) == 2
		}
	})

	// Keep the workers busy while gears switch: a stream of items (with
	// no reply channel) through the cascade.
	stopLoad := make(chan struct{})
	loadDone := make(chan int)
	set := images(t, 100)
	go func() {
		codec := wire.NewCodec()
		sent := 0
		defer func() { loadDone <- sent }()
		for ; sent < 5000; sent++ {
			select {
			case <-stopLoad:
				return
			default:
			}
			it := newItem(p, fmt.Sprintf("load-%d", sent), "acc", set.Item(sent%100), time.Now().Add(time.Minute))
			b, err := codec.EncodeItem(it)
			if err != nil {
				t.Error(err)
				return
			}
			m := nats.NewMsg(wire.ModelSubject(p.Pipeline, "linear"))
			m.Data = b
			m.Header.Set(wire.HeaderMsgID, it.ID+".linear")
			if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
				t.Error(err)
				return
			}
		}
	}()

	const switches = 40
	var lat, putLat []time.Duration
	last := ""
	for k := range switches {
		id := gears[(k+1)%2].ID
		st := e.setGear(t, id)
		putLat = append(putLat, time.Since(time.Unix(0, st.AtUnixNano)))
		lat = append(lat, waitEvents(st.AtUnixNano, id)...)
		last = id
		time.Sleep(20 * time.Millisecond) // let load run between switches
	}
	close(stopLoad)
	sent := <-loadDone
	slices.Sort(lat)
	q := func(f float64) time.Duration { return lat[int(math.Ceil(f*float64(len(lat))))-1] }
	slices.Sort(putLat)
	t.Logf("KV put round trip: p50 %v max %v", putLat[len(putLat)/2], putLat[len(putLat)-1])
	var served float64
	for _, w := range workers {
		served += w.counter("cascade_worker_items_total", "model", "linear")
	}
	t.Logf("gear apply latency over %d applications (2 workers × %d switches, %d items admitted meanwhile, %v served by linear): p50 %v, p99 %v, max %v",
		len(lat), switches, sent, served, q(0.5), q(0.99), lat[len(lat)-1])
	for i, w := range workers {
		if got := w.counter("cascade_worker_gear_index"); got != float64(p.GearByID(last)) {
			t.Errorf("worker %d gear gauge %v, want %d", i, got, p.GearByID(last))
		}
		if got := w.counter("cascade_worker_gear_apply_seconds"); got < switches {
			t.Errorf("worker %d observed %v gear applications, want >= %d", i, got, switches)
		}
	}

	// Items now follow the last gear.
	rep := e.listen(t, replySubject)
	ids := admitImages(t, e, "linear", last, 20, time.Now().Add(time.Minute), nil)
	natstest.WaitFor(t, "replies", 30*time.Second, func() bool { _, n := rep.snapshot(); return n >= len(ids) })
	got, _ := rep.snapshot()
	for _, id := range ids {
		for _, r := range got[id] {
			if r.Gear != last || r.Error != nil {
				t.Errorf("%s: gear %q error %v, want gear %q", id, r.Gear, r.Error, last)
			}
		}
	}
}

// TestGearSwitchAfterBucketRecreated: the control bucket is deleted and
// created again (the controller re-applying a vanished topology); the
// worker binds the new bucket, applies the gear written there, and items
// follow it.
func TestGearSwitchAfterBucketRecreated(t *testing.T) {
	p := testPlan(t, switchGears())
	e := startEnv(t, p)
	first := e.setGear(t, "acc")
	events := make(chan wire.GearState, 64)
	e.startWorker(t, func(c *Config) { c.Runners = 1 }, hooks{gearApplied: func(st wire.GearState, _ time.Duration) { events <- st }})
	waitApplied := func(want wire.GearState) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case st := <-events:
				if st.AtUnixNano == want.AtUnixNano && st.Gear == want.Gear {
					return
				}
			case <-timeout:
				t.Fatalf("gear %q (at %d) not applied", want.Gear, want.AtUnixNano)
			}
		}
	}
	waitApplied(first)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.js.DeleteKeyValue(ctx, wire.KVBucket(p.Pipeline)); err != nil {
		t.Fatal(err)
	}
	e.kv = e.srv.Topology(t, p, natsbus.TopologyConfig{})
	natstest.PutPlan(t, e.kv, p)
	waitApplied(e.setGear(t, "fast"))

	rep := e.listen(t, replySubject)
	ids := admitImages(t, e, "linear", "fast", 10, time.Now().Add(time.Minute), nil)
	natstest.WaitFor(t, "replies", 30*time.Second, func() bool { _, n := rep.snapshot(); return n >= len(ids) })
	got, n := rep.snapshot()
	checkExactlyOnce(t, ids, got, n, "replies")
	for _, id := range ids {
		if r := got[id][0]; r.Gear != "fast" || r.Error != nil {
			t.Errorf("%s: gear %q error %v, want gear fast", id, r.Gear, r.Error)
		}
	}
}

// TestCrashMidBatchRedelivers kills a worker's connection in the middle of
// a batch (before publishing, or after publishing but before acking); a
// second worker gets the redeliveries, and every request still ends with
// exactly one durable result.
func TestCrashMidBatchRedelivers(t *testing.T) {
	for _, tc := range []struct {
		name         string
		afterPublish bool
		envelope     int // items per admitted envelope; 0: version 1 single items
	}{
		{"before publish", false, 0},
		{"after publish before ack", true, 0},
		{"envelopes, before publish", false, 8},
		{"envelopes, after publishing escalations before ack", true, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := gear("g", 100, 16, 5, "linear", 0.9, "mlp_small", 0.8, "mlp")
			p := testPlan(t, []plan.Gear{g})
			e := startEnvWith(t, p, natsbus.TopologyConfig{AckWait: time.Second})
			rep := e.listen(t, replySubject)
			const n = 64
			var ids []string
			if tc.envelope > 0 {
				ids = admitEnvelopes(t, e, "linear", g.ID, n, tc.envelope, time.Now().Add(2*time.Minute))
			} else {
				ids = admitImages(t, e, "linear", g.ID, n, time.Now().Add(2*time.Minute), nil)
			}

			nc, err := nats.Connect(e.srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			crashed := make(chan int, 1)
			var once sync.Once
			crash := func(model string, k int) {
				once.Do(func() {
					nc.Close() // the process dies: nothing it sends from now on arrives
					crashed <- k
				})
			}
			h := hooks{beforePublish: crash}
			if tc.afterPublish {
				h = hooks{beforeSettle: crash}
			}
			a := e.startWorkerOn(t, nc, func(c *Config) { c.Runners = 1 }, h)
			a.crashed = true
			var inBatch int
			select {
			case inBatch = <-crashed:
			case <-time.After(30 * time.Second):
				t.Fatal("worker A never reached the crash point")
			}
			b := e.startWorker(t, nil, hooks{})

			natstest.WaitFor(t, "a reply per request", 60*time.Second, func() bool {
				got, _ := rep.snapshot()
				return len(got) == n
			})
			natstest.WaitFor(t, "empty queues", 60*time.Second, func() bool { return e.queuesEmpty(t) })
			durable, k := e.durableResults(t, "test")
			checkExactlyOnce(t, ids, durable, k, "durable results")
			got, k := rep.snapshot()
			for _, id := range ids {
				if len(got[id]) == 0 {
					t.Errorf("%s: no reply", id)
				}
			}
			redelivered := b.counter("cascade_worker_redeliveries_total")
			t.Logf("crashed with %d messages in the batch; worker B saw %v redeliveries; %d replies (core NATS may repeat) for %d requests",
				inBatch, redelivered, k, n)
			if redelivered < 1 {
				t.Error("worker B saw no redelivery")
			}
			// No second escalation: every item that reached a later model
			// was computed there once (worker A died before computing
			// anything after the crash point).
			for _, model := range []string{"mlp_small", "mlp"} {
				visited := 0
				for _, rs := range durable {
					for _, v := range rs[0].Visits {
						if v.Model == model {
							visited++
						}
					}
				}
				computed := b.counter("cascade_worker_items_total", "model", model)
				if int(computed) != visited {
					t.Errorf("%s computed %v items, but %d results visited it: an escalation was repeated", model, computed, visited)
				}
			}
		})
	}
}

// TestExpiredDeadline answers items whose deadline passed with
// deadline_exceeded, without computing them.
func TestExpiredDeadline(t *testing.T) {
	g := gear("g", 100, 16, 1, "linear", 0.9, "mlp")
	p := testPlan(t, []plan.Gear{g})
	e := startEnv(t, p)
	rep := e.listen(t, replySubject)
	const n = 6
	ids := admitImages(t, e, "linear", g.ID, n, time.Now().Add(-time.Second), func(i int, it *wire.Item) {
		if i == 0 {
			it.DeadlineUnixNano = time.Now().Add(time.Minute).UnixNano() // one live item
		}
	})
	w := e.startWorker(t, nil, hooks{})
	natstest.WaitFor(t, "replies", 30*time.Second, func() bool { _, k := rep.snapshot(); return k >= n })
	natstest.WaitFor(t, "empty queues", 30*time.Second, func() bool { return e.queuesEmpty(t) })
	got, k := rep.snapshot()
	checkExactlyOnce(t, ids, got, k, "replies")
	for i, id := range ids {
		r := got[id][0]
		if i == 0 {
			if r.Error != nil || len(r.Visits) == 0 {
				t.Errorf("live item: error %v, visits %v", r.Error, r.Visits)
			}
			continue
		}
		if r.Error == nil || r.Error.Code != wire.CodeDeadlineExceeded || len(r.Visits) != 0 {
			t.Errorf("%s: error %v visits %v, want deadline_exceeded without visits", id, r.Error, r.Visits)
		}
	}
	if got := w.settledCounter(t, n-1, "cascade_worker_items_total", "model", "linear", "outcome", "expired"); got != n-1 {
		t.Errorf("expired items %v, want %d", got, n-1)
	}
	if got := w.histSum("cascade_worker_batch_size_items", "model", "linear"); got != 1 {
		t.Errorf("linear computed %v items, want only the live one", got)
	}
}

// TestPoisonAndUndecodable: an item the model fails on goes back to its
// queue alone until its last try, then is dead-lettered with an internal
// error result, without failing its batch or envelope neighbours; an undecodable message is dead-lettered and
// terminated at once; an invalid item gets invalid_input; an item whose
// finite input makes the model's output non-finite gets invalid_input at
// once, never retried; an item whose reply subject is not an inbox is
// never answered there (its durable result says invalid_input).
func TestPoisonAndUndecodable(t *testing.T) {
	g := gear("solo", 100, 16, 20, "linear")
	p := testPlan(t, []plan.Gear{g})
	const maxDeliver = 3
	e := startEnvWith(t, p, natsbus.TopologyConfig{MaxDeliver: maxDeliver})
	rep := e.listen(t, replySubject)
	ids := admitImages(t, e, "linear", g.ID, 6, time.Now().Add(time.Minute), func(i int, it *wire.Item) {
		switch i {
		case 1: // NaN pixels: the model's output is NaN, which onnxrt rejects
			it.ID = "poison"                        // the model fails on it (the runError hook)
			it.ResultFormat = wire.ResultFormatJSON // its dead-letter result is JSON
		case 2:
			it.ID = "invalid"
			it.Input = wire.FP32Tensor([]int64{3}, []float32{1, 2, 3})
		case 3:
			// Finite, but so large the model's output is not: a permanent
			// error of this item, answered at once, never retried.
			vals := make([]float32, p.Input.Elements())
			for j := range vals {
				vals[j] = math.MaxFloat32
			}
			it.ID = "huge"
			it.Input = wire.FP32Tensor(p.Input.Shape, vals)
		case 4:
			// A forged route: the worker must not publish over the plan.
			it.ID = "forged"
			it.ReplyTo = "$KV." + wire.KVBucket(p.Pipeline) + "." + wire.KeyPlan
		}
	})
	garbage := nats.NewMsg(wire.ModelSubject(p.Pipeline, "linear"))
	garbage.Data = []byte("this is not msgpack")
	garbage.Header.Set(wire.HeaderMsgID, "garbage.linear")
	if _, err := e.js.PublishMsg(context.Background(), garbage); err != nil {
		t.Fatal(err)
	}
	planRev := e.planRevision(t)
	w := e.startWorker(t, nil, hooks{runError: func(model, id string) error {
		if id == "poison" {
			return errors.New("the model fails on this input")
		}
		return nil
	}})

	var replied []string
	for _, id := range ids {
		if id != "forged" {
			replied = append(replied, id)
		}
	}
	natstest.WaitFor(t, "replies", 30*time.Second, func() bool { got, _ := rep.snapshot(); return len(got) == len(replied) })
	natstest.WaitFor(t, "empty queue", 30*time.Second, func() bool { return e.queuesEmpty(t) })
	got, k := rep.snapshot()
	checkExactlyOnce(t, replied, got, k, "replies")
	durable, _ := e.durableResults(t, "test")
	for _, id := range ids {
		var r *wire.Result
		if id == "forged" {
			// No reply (its route is refused), its durable result is an
			// invalid_input error, and the plan is untouched.
			if rs := durable[id]; len(rs) != 1 || rs[0].Error == nil || rs[0].Error.Code != wire.CodeInvalidInput {
				t.Errorf("forged: durable results %+v, want one invalid_input", rs)
			}
			if got := e.planRevision(t); got != planRev {
				t.Errorf("plan revision %d, want %d: the worker published over the plan", got, planRev)
			}
			continue
		}
		r = got[id][0]
		switch id {
		case "huge":
			if r.Error == nil || r.Error.Code != wire.CodeInvalidInput {
				t.Errorf("huge: error %v, want invalid_input", r.Error)
			}
		case "poison":
			if r.Error == nil || r.Error.Code != wire.CodeInternal {
				t.Errorf("poison: error %v, want internal", r.Error)
			}
		case "invalid":
			if r.Error == nil || r.Error.Code != wire.CodeInvalidInput {
				t.Errorf("invalid: error %v, want invalid_input", r.Error)
			}
		default:
			if r.Error != nil || r.AnsweredBy != "linear" {
				t.Errorf("%s: error %v answered by %q", id, r.Error, r.AnsweredBy)
			}
		}
	}

	// The poison item's durable result is its JSON error.
	for _, m := range e.durableMsgs(t, "test") {
		if m.Header.Get(wire.HeaderMsgID) != wire.ResultMsgID("mnist", "poison") {
			continue
		}
		var r wire.Result
		if ct := m.Header.Get(wire.HeaderContentType); ct != wire.ContentTypeJSON {
			t.Errorf("poison: durable result Content-Type %q, want JSON", ct)
		} else if err := wire.DecodeOIPResponse(m.Data, &r); err != nil || r.ID != "poison" || r.Error == nil || r.Error.Code != wire.CodeInternal {
			t.Errorf("poison: durable result %s: %+v, %v", m.Data, r, err)
		}
	}

	// The dead-letter stream holds the poison item and the garbage.
	natstest.WaitFor(t, "dead letters", 10*time.Second, func() bool { return e.srv.StreamMsgs(t, wire.DLQStream(p.Pipeline)) == 2 })
	ctx := context.Background()
	dlq, err := e.js.Stream(ctx, wire.DLQStream(p.Pipeline))
	if err != nil {
		t.Fatal(err)
	}
	var dead []string
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := dlq.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != wire.DLQSubject(p.Pipeline, "linear") || m.Header.Get(wire.HeaderError) == "" {
			t.Errorf("dead letter %d: subject %s, error header %q", seq, m.Subject, m.Header.Get(wire.HeaderError))
		}
		dead = append(dead, m.Header.Get(wire.HeaderMsgID))
	}
	slices.Sort(dead)
	// The poison item's dead letter is its last retry envelope; the
	// garbage is the undecodable message itself.
	if !strings.HasSuffix(dead[0], "!poison#3.dlq") || strings.Count(dead[0], "!") != 1 || dead[1] != "seq-7.dlq.linear" {
		t.Errorf("dead letters %v", dead)
	}
	// Outcomes are counted at acknowledgement, after the replies: let the
	// five failures settle before reading the counts.
	w.settledCounter(t, 5, "cascade_worker_items_total", "model", "linear", "outcome", "failed")
	if got := w.counter("cascade_worker_dead_letters_total", "model", "linear"); got != 2 {
		t.Errorf("dead letters counted %v, want 2", got)
	}
	// The poison item alone goes back to the queue, in an envelope of its
	// own, until its last try; its envelope neighbours are answered once
	// and nothing is redelivered.
	if got := w.counter("cascade_worker_item_retries_total", "model", "linear"); got != maxDeliver {
		t.Errorf("item retries %v, want %d (the poison item's tries)", got, maxDeliver)
	}
	if got := w.counter("cascade_worker_items_total", "model", "linear", "outcome", "retried"); got != maxDeliver-1 {
		t.Errorf("items sent back %v, want %d", got, maxDeliver-1)
	}
	if got := w.counter("cascade_worker_redeliveries_total", "model", "linear"); got != 0 {
		t.Errorf("redeliveries %v, want 0", got)
	}
	if got := w.counter("cascade_worker_acks_total", "model", "linear", "action", "nak"); got != 0 {
		t.Errorf("naks %v, want 0", got)
	}
	if got := w.counter("cascade_worker_items_total", "model", "linear", "outcome", "failed"); got != 5 {
		t.Errorf("failed items %v, want 5 (poison, invalid, huge, forged, garbage)", got)
	}
	if got := w.counter("cascade_worker_non_finite_outputs_total", "model", "linear"); got != 1 {
		t.Errorf("non-finite outputs %v, want 1 (huge, answered once, never retried)", got)
	}
}

// TestItemOutsideNewGear: items admitted under gear a sit in linear's queue
// when the gear switches to b, which does not use linear. linear still
// computes them; they are answered if they reach linear's threshold in
// gear a, else escalated to mlp_small, b's first model after linear, which
// decides with b's threshold.
func TestItemOutsideNewGear(t *testing.T) {
	ga := gear("a", 100, 16, 1, "linear", 0.9, "mlp")
	gb := gear("b", 200, 16, 1, "mlp_small", 0.8, "mlp")
	p := testPlan(t, []plan.Gear{ga, gb})
	e := startEnv(t, p)
	e.setGear(t, "b")
	rep := e.listen(t, replySubject)
	const n = 200
	ids := admitImages(t, e, "linear", "a", n, time.Now().Add(time.Minute), nil)
	o := newOracle(t, e, images(t, n))
	e.startWorker(t, nil, hooks{})

	natstest.WaitFor(t, "replies", 60*time.Second, func() bool { _, k := rep.snapshot(); return k >= n })
	natstest.WaitFor(t, "empty queues", 30*time.Second, func() bool { return e.queuesEmpty(t) })
	got, k := rep.snapshot()
	checkExactlyOnce(t, ids, got, k, "replies")
	count := map[string]int{}
	ambiguous := 0
	for i, id := range ids {
		r := got[id][0]
		// The rule, written out for this case.
		var want []string
		amb := o.near("linear", i, 0.9)
		switch {
		case o.conf["linear"][i] >= 0.9:
			want = []string{"linear"}
		case o.conf["mlp_small"][i] >= 0.8:
			want = []string{"linear", "mlp_small"}
			amb = amb || o.near("mlp_small", i, 0.8)
		default:
			want = []string{"linear", "mlp_small", "mlp"}
			amb = amb || o.near("mlp_small", i, 0.8)
		}
		count[want[len(want)-1]]++
		if amb {
			ambiguous++
			continue
		}
		var visited []string
		for _, v := range r.Visits {
			visited = append(visited, v.Model)
			if v.Gear != "b" {
				t.Errorf("%s: visit %s decided under gear %q, want b", id, v.Model, v.Gear)
			}
		}
		if !slices.Equal(visited, want) || r.AnsweredBy != want[len(want)-1] || r.Gear != "b" || r.AdmittedGear != "a" || r.Error != nil {
			t.Errorf("%s: visits %v answered by %s gear %s admitted %s err %v; want visits %v",
				id, visited, r.AnsweredBy, r.Gear, r.AdmittedGear, r.Error, want)
		}
	}
	t.Logf("answered per model: %v (%d near a threshold, not checked)", count, ambiguous)
	if count["linear"] == 0 || count["mlp_small"]+count["mlp"] == 0 {
		t.Errorf("scenario does not exercise both branches: %v", count)
	}
	if ambiguous > n/50 {
		t.Errorf("%d ambiguous items", ambiguous)
	}
}

// TestDeadlineAwareEscalation: the next stage's profile says it cannot
// finish before the deadline, so uncertain items are answered degraded by
// the first stage instead of being escalated.
func TestDeadlineAwareEscalation(t *testing.T) {
	g := gear("g", 100, 16, 1, "linear", 0.9, "mlp_small")
	// mlp_small "takes" 10 minutes; deadlines are 1 minute away.
	p := testPlan(t, []plan.Gear{g}, withLatency("mlp_small", 600000))
	e := startEnv(t, p)
	rep := e.listen(t, replySubject)
	const n = 100
	ids := admitImages(t, e, "linear", g.ID, n, time.Now().Add(time.Minute), nil)
	o := newOracle(t, e, images(t, n))
	w := e.startWorker(t, nil, hooks{})
	natstest.WaitFor(t, "replies", 60*time.Second, func() bool { _, k := rep.snapshot(); return k >= n })
	got, k := rep.snapshot()
	checkExactlyOnce(t, ids, got, k, "replies")
	degraded := 0
	for i, id := range ids {
		r := got[id][0]
		if o.near("linear", i, 0.9) {
			continue
		}
		want := o.conf["linear"][i] < 0.9
		if r.AnsweredBy != "linear" || r.Degraded != want || r.Error != nil || r.Label != o.label["linear"][i] {
			t.Errorf("%s: answered by %s degraded %v err %v; want linear degraded %v", id, r.AnsweredBy, r.Degraded, r.Error, want)
		}
		if r.Degraded {
			degraded++
		}
	}
	if degraded == 0 {
		t.Error("no item was degraded: the scenario is not exercised")
	}
	if got := w.settledCounter(t, float64(degraded), "cascade_worker_degraded_total", "model", "linear", "reason", "deadline"); got != float64(degraded) {
		t.Errorf("degraded counter %v, want %d", got, degraded)
	}
	if e.srv.StreamMsgs(t, wire.ModelStream(p.Pipeline, "mlp_small")) != 0 {
		t.Error("something was escalated")
	}
}

// TestFullNextQueueDegrades: the next stage's queue holds one message and
// nobody serves it; the first escalation gets in, every other uncertain
// item is answered degraded instead of being lost or blocking.
func TestFullNextQueueDegrades(t *testing.T) {
	g := gear("g", 100, 16, 1, "linear", 0.9, "mlp_small")
	p := testPlan(t, []plan.Gear{g})
	e := startEnv(t, p)
	ctx := context.Background()
	if _, err := e.js.UpdateStream(ctx, natsbus.ModelStreamConfig(p.Pipeline, "mlp_small", natsbus.TopologyConfig{MaxQueue: 1})); err != nil {
		t.Fatal(err)
	}
	rep := e.listen(t, replySubject)
	const n = 100
	ids := admitImages(t, e, "linear", g.ID, n, time.Now().Add(time.Minute), nil)
	o := newOracle(t, e, images(t, n))
	uncertain := 0
	for i := range n {
		if o.near("linear", i, 0.9) {
			t.Skip("an item is within float noise of the threshold; counts would be ambiguous")
		}
		if o.conf["linear"][i] < 0.9 {
			uncertain++
		}
	}
	if uncertain < 2 {
		t.Fatalf("only %d uncertain items", uncertain)
	}
	w := e.startWorker(t, func(c *Config) { c.Models = []string{"linear"} }, hooks{})
	natstest.WaitFor(t, "replies", 60*time.Second, func() bool { _, k := rep.snapshot(); return k >= n-1 })
	natstest.WaitFor(t, "linear drained", 30*time.Second, func() bool {
		return e.srv.StreamMsgs(t, wire.ModelStream(p.Pipeline, "linear")) == 0
	})
	got, k := rep.snapshot()
	if k != n-1 {
		t.Errorf("%d replies, want %d (one item waits in mlp_small's queue)", k, n-1)
	}
	if m := e.srv.StreamMsgs(t, wire.ModelStream(p.Pipeline, "mlp_small")); m != 1 {
		t.Errorf("mlp_small holds %d items, want 1", m)
	}
	degraded := 0
	for _, id := range ids {
		for _, r := range got[id] {
			if r.Degraded {
				degraded++
			}
		}
	}
	if degraded != uncertain-1 {
		t.Errorf("%d degraded answers, want %d (uncertain items but the one that fit)", degraded, uncertain-1)
	}
	if got := w.settledCounter(t, float64(uncertain-1), "cascade_worker_degraded_total", "model", "linear", "reason", "queue_full"); got != float64(uncertain-1) {
		t.Errorf("queue_full counter %v, want %d", got, uncertain-1)
	}
}

// TestGracefulDrain cancels a worker in the middle of a batch: it finishes
// the batch in hand, publishes and acks it, and returns nil, leaving
// nothing unacknowledged and the rest queued.
func TestGracefulDrain(t *testing.T) {
	g := gear("solo", 100, 8, 1, "linear")
	p := testPlan(t, []plan.Gear{g})
	e := startEnv(t, p)
	rep := e.listen(t, replySubject)
	const n = 40
	admitImages(t, e, "linear", g.ID, n, time.Now().Add(time.Minute), nil)

	reached, release := make(chan int, 1), make(chan struct{})
	var once sync.Once
	h := hooks{beforePublish: func(_ string, k int) {
		once.Do(func() {
			reached <- k
			<-release
		})
	}}
	w := e.startWorker(t, func(c *Config) { c.Runners = 1 }, h)
	var inBatch int
	select {
	case inBatch = <-reached:
	case <-time.After(30 * time.Second):
		t.Fatal("no batch")
	}
	w.cancel() // SIGTERM while the batch is in hand
	close(release)
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	w.cancel = nil

	cons, err := e.js.Consumer(context.Background(), wire.ModelStream(p.Pipeline, "linear"), wire.ModelConsumer("linear"))
	if err != nil {
		t.Fatal(err)
	}
	var info *jetstream.ConsumerInfo
	natstest.WaitFor(t, "acks to land", 10*time.Second, func() bool {
		info, err = cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0
	})
	queued := e.srv.StreamMsgs(t, wire.ModelStream(p.Pipeline, "linear"))
	natstest.WaitFor(t, "replies of acked items", 10*time.Second, func() bool { _, k := rep.snapshot(); return uint64(k)+queued == n })
	_, k := rep.snapshot()
	t.Logf("batch in hand %d; answered %d; left queued %d", inBatch, k, queued)
	if k < inBatch {
		t.Errorf("answered %d, fewer than the batch in hand (%d)", k, inBatch)
	}
	if queued == 0 {
		t.Error("the worker kept pulling after shutdown")
	}
}

// TestSlowBatchIsNotRedelivered holds a batch three times the consumer's
// AckWait while a second worker waits on the same queue: the first worker
// reports the batch in progress, so the server does not hand it to the
// second, and every item is answered once, by the first.
func TestSlowBatchIsNotRedelivered(t *testing.T) {
	g := gear("solo", 100, 8, 1, "linear")
	p := testPlan(t, []plan.Gear{g})
	const ackWait = time.Second
	e := startEnvWith(t, p, natsbus.TopologyConfig{AckWait: ackWait})
	rep := e.listen(t, replySubject)
	const n = 8
	admitImages(t, e, "linear", g.ID, n, time.Now().Add(time.Minute), nil)

	var once sync.Once
	held := make(chan int, 1)
	slow := e.startWorker(t, func(c *Config) { c.Runners = 1 }, hooks{beforePublish: func(_ string, k int) {
		once.Do(func() {
			held <- k
			time.Sleep(3 * ackWait)
		})
	}})
	var inBatch int
	select {
	case inBatch = <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("no batch")
	}
	other := e.startWorker(t, func(c *Config) { c.Runners = 1 }, hooks{})
	natstest.WaitFor(t, "every item answered", 30*time.Second, func() bool { _, k := rep.snapshot(); return k >= n })
	got, k := rep.snapshot()
	for id, rs := range got {
		if len(rs) != 1 {
			t.Errorf("item %s answered %d times", id, len(rs))
		}
	}
	if k != n {
		t.Errorf("%d replies for %d items", k, n)
	}
	slow.settledCounter(t, float64(inBatch), "cascade_worker_acks_total", "model", "linear", "action", "ack")
	for name, w := range map[string]*testWorker{"slow": slow, "other": other} {
		if got := w.counter("cascade_worker_redeliveries_total", "model", "linear"); got != 0 {
			t.Errorf("%s worker saw %v redeliveries, want 0", name, got)
		}
	}
	t.Logf("held a batch of %d messages for %v with AckWait %v", inBatch, 3*ackWait, ackWait)
}
