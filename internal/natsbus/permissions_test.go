package natsbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// The tests here run nats-server with the shipped deploy/nats/single.conf
// (and so accounts.conf) and check, request by request, who the server lets
// publish and read what: DESIGN.md, "Trust"; README.md, "Access control".

// refusalBound is how long a check waits for the server to refuse an
// operation. A refusal comes back within a round trip; the bound only keeps
// a failing check (one the server allowed) short.
const refusalBound = 2 * time.Second

// silenceBound is how long a check waits to make sure nothing arrives.
const silenceBound = 200 * time.Millisecond

// deployed is a nats-server started from the shipped config, with the
// topology of testPlan (pipeline "tiny": models small and big) created by
// the controller user, the plan and gear keys written, and one message in
// each of the jobs stream and the small model's queue.
type deployed struct {
	url string
	js  jetstream.JetStream // the controller's
	kv  jetstream.KeyValue
}

func startDeployed(t *testing.T) *deployed {
	t.Helper()
	natstest.SetDeployPasswords(t)
	srv := natstest.StartConfigFile(t, "../../deploy/nats/single.conf")
	d := &deployed{url: srv.ClientURL()}
	ctl := d.connect(t, "controller", "")
	d.js = ctl.jetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var err error
	if d.kv, err = natsbus.EnsureTopology(ctx, d.js, natstest.TinyPlan(t), natsbus.TopologyConfig{Storage: jetstream.MemoryStorage, MaxQueueBytes: 16 << 20, MaxJobsBytes: 16 << 20, ResultsMaxBytes: 16 << 20, DLQMaxBytes: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{wire.KeyPlan, wire.KeyGear} {
		if _, err := d.kv.Put(ctx, key, []byte(`{"written by":"controller"}`)); err != nil {
			t.Fatal(err)
		}
	}
	for _, subject := range []string{wire.JobsSubject("tiny", "default"), wire.ModelSubject("tiny", "small")} {
		if _, err := d.js.Publish(ctx, subject, []byte("seed")); err != nil {
			t.Fatal(err)
		}
	}
	ctl.expectNoErrors(t)
	return d
}

// client is one connection and the asynchronous errors the server sent it.
type client struct {
	nc   *nats.Conn
	errs chan error
}

// connect connects as user; a non-empty inboxPrefix is its
// nats.CustomInboxPrefix.
func (d *deployed) connect(t *testing.T, user, inboxPrefix string) *client {
	t.Helper()
	c := &client{errs: make(chan error, 64)}
	c.nc = natstest.ConnectAs(t, d.url, user, inboxPrefix, c.errs)
	return c
}

// jetStream is c's JetStream handle.
func (c *client) jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// expectRefused fails t unless the server refuses subject to c (a
// permissions violation naming it) within refusalBound.
func (c *client) expectRefused(t *testing.T, subject string) {
	t.Helper()
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	want := strings.ToLower(`"` + subject + `"`)
	timeout := time.After(refusalBound)
	for {
		select {
		case err := <-c.errs:
			msg := strings.ToLower(err.Error())
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(msg, want) {
				return
			}
			t.Logf("other error: %v", err)
		case <-timeout:
			t.Fatalf("the server did not refuse %s", subject)
		}
	}
}

// expectNoErrors fails t if the server sent c an error.
func (c *client) expectNoErrors(t *testing.T) {
	t.Helper()
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.errs:
		t.Fatalf("unexpected error: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
}

// expectNothing fails t if sub receives a message within silenceBound.
func expectNothing(t *testing.T, sub *nats.Subscription) {
	t.Helper()
	if msg, err := sub.NextMsg(silenceBound); err == nil {
		t.Fatalf("received %q on %s: %.120s", msg.Subject, sub.Subject, msg.Data)
	}
}

// request sends a request on subject with a reply to c's own inbox and
// returns the inbox's subscription.
func (c *client) request(t *testing.T, subject string, data []byte) *nats.Subscription {
	t.Helper()
	sub, err := c.nc.SubscribeSync(c.nc.NewInbox())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.nc.PublishRequest(subject, sub.Subject, data); err != nil {
		t.Fatal(err)
	}
	return sub
}

// A state is what an attempt must leave as it was, read with the
// controller's permissions.
type state func(*testing.T) string

// streamState is a stream's message count and last sequence.
func (d *deployed) streamState(stream string) state {
	return func(t *testing.T) string {
		t.Helper()
		s, err := d.js.Stream(context.Background(), stream)
		if err != nil {
			return "stream " + stream + ": " + err.Error()
		}
		info, err := s.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("stream %s: %d messages, last %d", stream, info.State.Msgs, info.State.LastSeq)
	}
}

// keyState is a control key's revision and value.
func (d *deployed) keyState(key string) state {
	return func(t *testing.T) string {
		t.Helper()
		e, err := d.kv.Get(context.Background(), key)
		if err != nil {
			return "key " + key + ": " + err.Error()
		}
		return fmt.Sprintf("key %s: revision %d, %q", key, e.Revision(), e.Value())
	}
}

// consumerState is whether a consumer exists and how far it delivered.
func (d *deployed) consumerState(stream, name string) state {
	return func(t *testing.T) string {
		t.Helper()
		c, err := d.js.Consumer(context.Background(), stream, name)
		if err != nil {
			return "consumer " + stream + "/" + name + ": " + err.Error()
		}
		info := c.CachedInfo()
		return fmt.Sprintf("consumer %s/%s: created %v, delivered %d, ack floor %d",
			stream, name, info.Created.UnixNano(), info.Delivered.Stream, info.AckFloor.Stream)
	}
}

// unchanged runs do and fails t if any of states differs afterwards.
func unchanged(t *testing.T, states []state, do func()) {
	t.Helper()
	before := make([]string, len(states))
	for i, s := range states {
		before[i] = s(t)
	}
	do()
	for i, s := range states {
		if after := s(t); after != before[i] {
			t.Errorf("changed: %s, now %s", before[i], after)
		}
	}
}

func consumerRequest(t *testing.T, stream string, cfg jetstream.ConsumerConfig) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"stream_name": stream, "config": cfg})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProducerPermissionsDenyEverythingButItsOwn checks, one denial at a
// time, that producer users (user producer = client default) can reach
// nothing but the intake, their own jobs subject, their own results
// consumer and their own inboxes. Each refusal is checked twice: the server
// says so, and nothing happened (no message arrived, no state changed).
func TestProducerPermissionsDenyEverythingButItsOwn(t *testing.T) {
	d := startDeployed(t)
	ctx := context.Background()
	jobs, small := wire.JobsStream("tiny"), wire.ModelStream("tiny", "small")

	// billing's own results consumer, holding one result.
	billing := d.connect(t, "billing", "_INBOX.billing")
	bjs := billing.jetStream(t)
	if _, err := bjs.CreateOrUpdateConsumer(ctx, wire.ResultsStream, jetstream.ConsumerConfig{
		Durable: "billing", FilterSubject: wire.ResultSubject("tiny", "billing"), AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatalf("billing creates its results consumer: %v", err)
	}
	if _, err := d.js.Publish(ctx, wire.ResultSubject("tiny", "billing"), []byte("billing's result")); err != nil {
		t.Fatal(err)
	}

	// A subscription on subject must see nothing a publisher with every
	// permission sends there.
	subscribe := func(subject string) func(*testing.T, *client) {
		return func(t *testing.T, c *client) {
			sub, err := c.nc.SubscribeSync(subject)
			if err != nil {
				t.Fatal(err)
			}
			c.expectRefused(t, subject)
			probe := strings.NewReplacer(">", "x", "*", "x").Replace(subject)
			if err := d.js.Conn().Publish(probe, []byte("secret")); err != nil {
				t.Fatal(err)
			}
			expectNothing(t, sub)
		}
	}
	// A request on subject must be refused and get no answer.
	request := func(subject string, data []byte) func(*testing.T, *client) {
		return func(t *testing.T, c *client) {
			reply := c.request(t, subject, data)
			c.expectRefused(t, subject)
			expectNothing(t, reply)
		}
	}
	createConsumer := func(subject, name, filter string) func(*testing.T, *client) {
		return request(subject, consumerRequest(t, wire.ResultsStream, jetstream.ConsumerConfig{
			Durable: name, FilterSubject: filter, AckPolicy: jetstream.AckExplicitPolicy,
		}))
	}
	billingConsumer, ownConsumer := d.consumerState(wire.ResultsStream, "billing"), d.consumerState(wire.ResultsStream, "default")
	const resultsAPI = "$JS.API.CONSUMER.CREATE." + wire.ResultsStream + "."

	cases := []struct {
		name   string
		do     func(*testing.T, *client)
		intact []state // what the attempt must leave as it was
	}{
		{name: "publish into a model queue",
			do:     request(wire.ModelSubject("tiny", "small"), []byte("item")),
			intact: []state{d.streamState(small)}},
		{name: "publish a job as another client",
			do:     request(wire.JobsSubject("tiny", "billing"), []byte("job")),
			intact: []state{d.streamState(jobs)}},
		{name: "publish a result for another client",
			do:     request(wire.ResultSubject("tiny", "billing"), []byte("forged")),
			intact: []state{d.streamState(wire.ResultsStream)}},
		{name: "publish into another client's inbox", do: request("_INBOX.billing.x", []byte("forged"))},
		{name: "publish ingress stats", do: request(wire.StatsSubject("tiny", "forged"), []byte("{}"))},
		{name: "publish a worker heartbeat (forge live capacity)", do: request(wire.WorkerStatsSubject("tiny", "forged"), []byte("{}"))},
		{name: "put the plan", do: request("$KV.cascade_tiny.plan", []byte("{}")),
			intact: []state{d.keyState(wire.KeyPlan)}},
		{name: "put the gear", do: request("$KV.cascade_tiny.gear", []byte("{}")),
			intact: []state{d.keyState(wire.KeyGear)}},
		{name: "get the plan (direct get)", do: request("$JS.API.DIRECT.GET.KV_cascade_tiny.$KV.cascade_tiny.plan", nil)},
		{name: "get the plan (message get)", do: request("$JS.API.STREAM.MSG.GET.KV_cascade_tiny", []byte(`{"last_by_subj":"$KV.cascade_tiny.plan"}`))},
		{name: "control bucket info", do: request("$JS.API.STREAM.INFO.KV_cascade_tiny", nil)},
		{name: "watch the control bucket (subscription)", do: subscribe("$KV.cascade_tiny.>")},
		{name: "watch the control bucket (consumer)", do: request("$JS.API.CONSUMER.CREATE.KV_cascade_tiny.watch",
			consumerRequest(t, "KV_cascade_tiny", jetstream.ConsumerConfig{Name: "watch"}))},
		{name: "delete the jobs consumer", do: request("$JS.API.CONSUMER.DELETE."+jobs+".ingress", nil),
			intact: []state{d.consumerState(jobs, "ingress")}},
		{name: "jobs consumer info", do: request("$JS.API.CONSUMER.INFO."+jobs+".ingress", nil)},
		{name: "fetch from the jobs consumer", do: request("$JS.API.CONSUMER.MSG.NEXT."+jobs+".ingress", []byte(`{"batch":1,"no_wait":true}`)),
			intact: []state{d.consumerState(jobs, "ingress")}},
		{name: "delete a model consumer", do: request("$JS.API.CONSUMER.DELETE."+small+".small", nil),
			intact: []state{d.consumerState(small, "small")}},
		{name: "model consumer info", do: request("$JS.API.CONSUMER.INFO."+small+".small", nil)},
		{name: "fetch from a model consumer", do: request("$JS.API.CONSUMER.MSG.NEXT."+small+".small", []byte(`{"batch":1,"no_wait":true}`)),
			intact: []state{d.consumerState(small, "small")}},
		{name: "delete the jobs stream", do: request("$JS.API.STREAM.DELETE."+jobs, nil),
			intact: []state{d.streamState(jobs)}},
		{name: "purge the results stream", do: request("$JS.API.STREAM.PURGE."+wire.ResultsStream, nil),
			intact: []state{d.streamState(wire.ResultsStream)}},
		{name: "results stream info", do: request("$JS.API.STREAM.INFO."+wire.ResultsStream, []byte(`{"subjects_filter":">"}`))},
		{name: "read a result by sequence", do: request("$JS.API.STREAM.MSG.GET."+wire.ResultsStream, []byte(`{"seq":1}`))},
		{name: "read a result by direct get", do: request("$JS.API.DIRECT.GET."+wire.ResultsStream, []byte(`{"seq":1}`))},
		{name: "results consumer filtered to another client's subject",
			do:     createConsumer(resultsAPI+"billing."+wire.ResultSubject("tiny", "billing"), "billing", wire.ResultSubject("tiny", "billing")),
			intact: []state{billingConsumer}},
		{name: "own consumer name filtered to another client's subject",
			do:     createConsumer(resultsAPI+"default."+wire.ResultSubject("tiny", "billing"), "default", wire.ResultSubject("tiny", "billing")),
			intact: []state{ownConsumer}},
		{name: "own consumer name filtered to every client's results",
			do:     createConsumer(resultsAPI+"default.cascade.tiny.result.*", "default", "cascade.tiny.result.*"),
			intact: []state{ownConsumer}},
		{name: "own consumer name unfiltered", do: createConsumer(resultsAPI+"default", "default", ""),
			intact: []state{ownConsumer}},
		{name: "another consumer name filtered to own results",
			do: createConsumer(resultsAPI+"mine."+wire.ResultSubject("tiny", "default"), "mine", wire.ResultSubject("tiny", "default"))},
		{name: "results consumer through the legacy durable API",
			do:     createConsumer("$JS.API.CONSUMER.DURABLE.CREATE."+wire.ResultsStream+".default", "default", wire.ResultSubject("tiny", "default")),
			intact: []state{ownConsumer}},
		{name: "delete another client's results consumer",
			do:     request("$JS.API.CONSUMER.DELETE."+wire.ResultsStream+".billing", nil),
			intact: []state{d.consumerState(wire.ResultsStream, "billing")}},
		{name: "another client's results consumer info", do: request("$JS.API.CONSUMER.INFO."+wire.ResultsStream+".billing", nil)},
		{name: "fetch from another client's results consumer",
			do:     request("$JS.API.CONSUMER.MSG.NEXT."+wire.ResultsStream+".billing", []byte(`{"batch":1,"no_wait":true}`)),
			intact: []state{billingConsumer}},
		{name: "ack another client's result", do: request("$JS.ACK."+wire.ResultsStream+".billing.1.1.1.0.0", nil),
			intact: []state{billingConsumer}},
		{name: "subscribe to another client's inbox", do: subscribe("_INBOX.billing.>")},
		{name: "subscribe to every inbox", do: subscribe("_INBOX.>")},
		{name: "subscribe to another client's results", do: subscribe(wire.ResultSubject("tiny", "billing"))},
		{name: "subscribe to requests", do: subscribe(wire.InferSubject("tiny"))},
		{name: "subscribe to jobs", do: subscribe(wire.JobsSubject("tiny", ">"))},
		{name: "subscribe to a model queue", do: subscribe(wire.ModelSubject("tiny", "small"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := d.connect(t, "producer", "_INBOX.default")
			unchanged(t, tc.intact, func() { tc.do(t, c) })
		})
	}
}

// TestProducerPermissionsAllowOwnTraffic checks what each producer user may
// do, as the client library does it: request-reply on its own inbox prefix,
// a durable job with its PubAck, and its results through its own durable
// consumer (create, info, fetch, ack, delete), all without a refusal.
func TestProducerPermissionsAllowOwnTraffic(t *testing.T) {
	d := startDeployed(t)

	// An ingress answering requests, or handing them to a worker to answer
	// (as it does a single item); a worker publishing results. Requests
	// come through the CASCADE account's service export, so their reply
	// subjects are the server's _R_. ones, which lead back to the
	// requester's account from any connection of CASCADE.
	worker := d.connect(t, "worker", "")
	wjs := worker.jetStream(t)
	ingress := d.connect(t, "ingress", "")
	if _, err := ingress.nc.QueueSubscribe(wire.InferSubject("tiny"), wire.IngressQueue, func(m *nats.Msg) {
		answer := append([]byte("answer to "), m.Data...)
		if !strings.HasPrefix(m.Reply, wire.ServiceImportReplyPrefix) {
			answer = []byte("reply subject " + m.Reply)
		}
		if strings.HasSuffix(string(m.Data), "via worker") {
			_ = worker.nc.Publish(m.Reply, answer)
			return
		}
		_ = m.Respond(answer)
	}); err != nil {
		t.Fatal(err)
	}
	// The server knows the responder before the first request comes.
	if err := ingress.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ user, client string }{{"producer", "default"}, {"billing", "billing"}} {
		t.Run(tc.client, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := d.connect(t, tc.user, "_INBOX."+tc.client)

			for _, data := range []string{tc.client, tc.client + " via worker"} {
				reply, err := c.nc.RequestWithContext(ctx, wire.InferSubject("tiny"), []byte(data))
				if err != nil {
					t.Fatalf("request-reply (%s): %v", data, err)
				}
				if string(reply.Data) != "answer to "+data {
					t.Fatalf("reply %q", reply.Data)
				}
			}

			js := c.jetStream(t)
			ack, err := js.Publish(ctx, wire.JobsSubject("tiny", tc.client), []byte("job"), jetstream.WithMsgID(tc.client+"-job-1"))
			if err != nil {
				t.Fatalf("publish a job: %v", err)
			}
			if ack.Stream != wire.JobsStream("tiny") {
				t.Fatalf("job acked by stream %q", ack.Stream)
			}

			if _, err := wjs.Publish(ctx, wire.ResultSubject("tiny", tc.client), []byte("result for "+tc.client)); err != nil {
				t.Fatalf("worker publishes a result: %v", err)
			}
			cons, err := js.CreateOrUpdateConsumer(ctx, wire.ResultsStream, jetstream.ConsumerConfig{
				Durable: tc.client, FilterSubject: wire.ResultSubject("tiny", tc.client), AckPolicy: jetstream.AckExplicitPolicy,
			})
			if err != nil {
				t.Fatalf("create own results consumer: %v", err)
			}
			if _, err := js.Consumer(ctx, wire.ResultsStream, tc.client); err != nil {
				t.Fatalf("own results consumer info: %v", err)
			}
			msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatalf("fetch own result: %v", err)
			}
			if string(msg.Data()) != "result for "+tc.client {
				t.Fatalf("result %q", msg.Data())
			}
			if err := msg.DoubleAck(ctx); err != nil {
				t.Fatalf("ack own result: %v", err)
			}
			if err := js.DeleteConsumer(ctx, wire.ResultsStream, tc.client); err != nil {
				t.Fatalf("delete own results consumer: %v", err)
			}
			c.expectNoErrors(t)
		})
	}
	ingress.expectNoErrors(t)
	worker.expectNoErrors(t)
}

// TestServicesAnswerOnlyOnInboxes checks that the ingress and worker users
// may answer a request only on an inbox: a reply subject naming the control
// bucket, the jobs intake, the JetStream API or a consumer of jobs or
// results is refused even as a response (no allow_responses). Result
// subjects stay open to them (they publish results); the services' own
// check of reply subjects covers those.
func TestServicesAnswerOnlyOnInboxes(t *testing.T) {
	d := startDeployed(t)
	jobs := wire.JobsStream("tiny")
	replies := []struct {
		subject string
		intact  state
	}{
		{"$KV.cascade_tiny.plan", d.keyState(wire.KeyPlan)},
		{"$KV.cascade_tiny.gear", d.keyState(wire.KeyGear)},
		{wire.JobsSubject("tiny", "default"), d.streamState(jobs)},
		{"$JS.API.STREAM.DELETE." + wire.ResultsStream, nil},
		{"$JS.API.STREAM.PURGE." + jobs, d.streamState(jobs)},
		{"$JS.API.CONSUMER.DELETE." + jobs + ".ingress", d.consumerState(jobs, "ingress")},
		{"$JS.API.CONSUMER.DELETE." + wire.ResultsStream + ".default", nil},
		{"$JS.API.CONSUMER.MSG.NEXT." + wire.ResultsStream + ".default", nil},
	}
	ctl := d.connect(t, "controller", "")
	for _, svc := range []struct{ user, subject string }{
		{"ingress", wire.InferSubject("tiny")},
		{"worker", "_INBOX.worker-test.in"},
	} {
		t.Run(svc.user, func(t *testing.T) {
			c := d.connect(t, svc.user, "")
			sub, err := c.nc.SubscribeSync(svc.subject)
			if err != nil {
				t.Fatal(err)
			}
			c.expectNoErrors(t)
			// The answer to an inbox goes through.
			inbox, err := ctl.nc.SubscribeSync("_INBOX.caller.1")
			if err != nil {
				t.Fatal(err)
			}
			answer := func(reply string) {
				t.Helper()
				if err := ctl.nc.PublishRequest(svc.subject, reply, []byte("request")); err != nil {
					t.Fatal(err)
				}
				req, err := sub.NextMsg(refusalBound)
				if err != nil {
					t.Fatalf("no request reached %s: %v", svc.user, err)
				}
				if err := req.Respond([]byte("answer")); err != nil {
					t.Fatal(err)
				}
			}
			answer(inbox.Subject)
			if _, err := inbox.NextMsg(refusalBound); err != nil {
				t.Fatalf("answer on an inbox: %v", err)
			}
			c.expectNoErrors(t)
			for _, r := range replies {
				t.Run(r.subject, func(t *testing.T) {
					var states []state
					if r.intact != nil {
						states = append(states, r.intact)
					}
					unchanged(t, states, func() {
						answer(r.subject)
						c.expectRefused(t, r.subject)
					})
				})
			}
		})
	}
}

// TestProducerCannotAimJetStreamReplies checks what user permissions alone
// could not: nats-server sends the answer to a JetStream request (a job's
// PubAck, an API response) to whatever reply subject the requester named,
// whatever the requester may publish. Producers are in accounts of their
// own and reach the CASCADE account only through its service exports, which
// replace the reply subject with a _R_. one that leads back to the
// producer's account: a reply aimed at the gear or plan key, another
// client's results or the JetStream API lands there, where it reaches
// nothing of CASCADE's. The jobs themselves are taken (so the server did
// answer them). Each client has an account of its own, so neither can a
// reply reach another client's inboxes.
func TestProducerCannotAimJetStreamReplies(t *testing.T) {
	d := startDeployed(t)
	c := d.connect(t, "producer", "_INBOX.default")
	billing := d.connect(t, "billing", "_INBOX.billing")
	billingInbox, err := billing.nc.SubscribeSync("_INBOX.billing.>")
	if err != nil {
		t.Fatal(err)
	}
	billing.expectNoErrors(t)
	aimed := []string{
		"$KV.cascade_tiny.gear", "$KV.cascade_tiny.plan",
		wire.ResultSubject("tiny", "billing"),
		"$JS.API.STREAM.PURGE." + wire.ResultsStream,
		"$JS.API.CONSUMER.DELETE." + wire.JobsStream("tiny") + ".ingress",
		"_INBOX.billing.aimed",
	}
	unchanged(t, []state{
		d.keyState(wire.KeyPlan), d.keyState(wire.KeyGear), d.streamState(wire.ResultsStream),
		d.consumerState(wire.JobsStream("tiny"), "ingress"),
	}, func() {
		for _, reply := range aimed {
			if err := c.nc.PublishRequest(wire.JobsSubject("tiny", "default"), reply, []byte("job")); err != nil {
				t.Fatal(err)
			}
			if err := c.nc.PublishRequest("$JS.API.CONSUMER.INFO."+wire.ResultsStream+".default", reply, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(silenceBound)
	})
	c.expectNoErrors(t)
	expectNothing(t, billingInbox)
	want := fmt.Sprintf("stream %s: %d messages, last %d", wire.JobsStream("tiny"), 1+len(aimed), 1+len(aimed))
	jobs := d.streamState(wire.JobsStream("tiny"))
	natstest.WaitForState(t, fmt.Sprintf("the seed and the %d jobs", len(aimed)), refusalBound, func() (bool, string) {
		got := jobs(t)
		return got == want, got
	})
}

// TestIngressKeepsIdempotencyRecords: the ingress user may create, read,
// watch, update and delete the idempotency records of a client
// (`<client>.<hash>` in cascade_<p>_idem), which is all the Idempotency-Key
// needs; those rules give it neither the control bucket's keys nor its own
// jobs consumer.
func TestIngressKeepsIdempotencyRecords(t *testing.T) {
	d := startDeployed(t)
	ing := d.connect(t, "ingress", "")
	js := ing.jetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, wire.IdempotencyBucket("tiny"))
	if err != nil {
		t.Fatal(err)
	}
	key := wire.IdempotencyRecordKey("default", "order-1")
	rev, err := kv.Create(ctx, key, []byte(`{"state":"pending"}`))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := kv.Create(ctx, key, []byte(`{"state":"pending"}`)); !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatalf("second create = %v, want ErrKeyExists", err)
	}
	w, err := kv.Watch(ctx, key)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	if e := <-w.Updates(); e == nil || string(e.Value()) != `{"state":"pending"}` {
		t.Fatalf("watch delivered %v", e)
	}
	if e := <-w.Updates(); e != nil {
		t.Fatalf("watch delivered %v, want the end of the current values", e)
	}
	if _, err := kv.Update(ctx, key, []byte(`{"state":"done"}`), rev); err != nil {
		t.Fatalf("update: %v", err)
	}
	if e := <-w.Updates(); e == nil || string(e.Value()) != `{"state":"done"}` {
		t.Fatalf("watch delivered %v after the update", e)
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, key); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := kv.Create(ctx, key, []byte(`{"state":"pending"}`)); err != nil {
		t.Fatalf("create after delete: %v", err)
	}
	ing.expectNoErrors(t)

	jobs := wire.JobsStream("tiny")
	for _, c := range []struct {
		subject string
		intact  state
	}{
		{"$KV.cascade_tiny.gear", d.keyState(wire.KeyGear)},
		{"$KV.cascade_tiny.plan", d.keyState(wire.KeyPlan)},
		{"$JS.API.CONSUMER.CREATE." + jobs + ".ingress.$KV.a.b.c", d.consumerState(jobs, "ingress")},
	} {
		t.Run(c.subject, func(t *testing.T) {
			unchanged(t, []state{c.intact}, func() {
				if err := ing.nc.Publish(c.subject, []byte(`{}`)); err != nil {
					t.Fatal(err)
				}
				ing.expectRefused(t, c.subject)
			})
		})
	}
}
