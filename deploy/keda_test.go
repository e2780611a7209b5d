package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// jsz is the part of nats-server's /jsz answer KEDA's nats-jetstream scaler
// decodes (pkg/scalers/nats_jetstream_scaler.go: account_details →
// stream_detail → consumer_detail).
type jsz struct {
	Accounts []struct {
		Name    string `json:"name"`
		Streams []struct {
			Name      string `json:"name"`
			Consumers []struct {
				Name          string `json:"name"`
				NumPending    int    `json:"num_pending"`
				NumAckPending int    `json:"num_ack_pending"`
			} `json:"consumer_detail"`
		} `json:"stream_detail"`
	} `json:"account_details"`
}

// lag is what the scaler acts on for one trigger: num_pending +
// num_ack_pending of the consumer, found by account, stream and consumer
// name; found is false when any of them is missing.
func (j *jsz) lag(account, stream, consumer string) (lag int, ackPending int, found bool) {
	for _, a := range j.Accounts {
		if a.Name != account {
			continue
		}
		for _, s := range a.Streams {
			if s.Name != stream {
				continue
			}
			for _, c := range s.Consumers {
				if c.Name == consumer {
					return c.NumPending + c.NumAckPending, c.NumAckPending, true
				}
			}
		}
	}
	return 0, 0, false
}

// TestKEDAReadsModelLagFromMonitoring runs nats-server with the Kubernetes
// config (account CASCADE and its users) and monitoring on a free loopback
// port, applies the MNIST plan's topology as the controller does, queues
// items into one model's stream as the ingress does (no worker runs, so
// they stay), holds some of them delivered and unacked as a busy worker
// would, and reads /jsz with the URL KEDA builds from the model's trigger
// in deploy/k8s/scaledobjects.yaml: the lag equals what was queued.
func TestKEDAReadsModelLagFromMonitoring(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := loadK8sNATSConfig(t)
	opts.HTTPHost, opts.HTTPPort = "127.0.0.1", -1 // KEDA reads /jsz
	srv := natstest.StartOptions(t, opts)
	connect := func(user string) jetstream.JetStream {
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(user, user+"-test"))
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}

	p, err := mnist.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsbus.EnsureTopology(ctx, connect("controller"), p, natsbus.TopologyConfig{}); err != nil {
		t.Fatal(err)
	}
	const model, queued, held = "cnn", 37, 5
	ingress := connect("ingress")
	for i := range queued {
		if _, err := ingress.Publish(ctx, wire.ModelSubject(p.Pipeline, model), []byte(fmt.Sprintf("item %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := connect("worker").Consumer(ctx, wire.ModelStream(p.Pipeline, model), wire.ModelConsumer(model))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(held, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for range batch.Messages() {
		got++ // delivered, never acked: ack_pending
	}
	if got != held {
		t.Fatalf("fetched %d messages, want %d", got, held)
	}

	var trigger map[string]any
	_, objs := manifests(t)
	for _, o := range objs {
		for _, tr := range list(o.doc, "spec", "triggers") {
			if str(tr, "metadata", "consumer") == model {
				trigger, _ = get(tr, "metadata").(map[string]any)
			}
		}
	}
	if trigger == nil {
		t.Fatalf("no trigger for model %s in deploy/k8s", model)
	}
	// The endpoint is the test server's; the rest as KEDA builds it
	// (getNATSJetStreamMonitoringURL).
	url := fmt.Sprintf("http://%s/jsz?acc=%s&consumers=true&config=true", srv.MonitorAddr(), str(trigger, "account"))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	var j jsz
	if err := json.NewDecoder(resp.Body).Decode(&j); err != nil {
		t.Fatal(err)
	}
	lag, ackPending, found := j.lag(str(trigger, "account"), str(trigger, "stream"), str(trigger, "consumer"))
	if !found {
		t.Fatalf("/jsz has no consumer %s of stream %s in account %s", str(trigger, "consumer"), str(trigger, "stream"), str(trigger, "account"))
	}
	if lag != queued || ackPending != held {
		t.Errorf("lag %d (ack pending %d), want %d queued (%d held by a worker)", lag, ackPending, queued, held)
	}
	// The other models' consumers are there, idle.
	for _, m := range p.UsedModels() {
		if m == model {
			continue
		}
		if l, _, ok := j.lag(account, wire.ModelStream(p.Pipeline, m), wire.ModelConsumer(m)); !ok || l != 0 {
			t.Errorf("model %s: lag %d (found %v), want an idle consumer", m, l, ok)
		}
	}
}
