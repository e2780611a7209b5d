package system_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsembed"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// TestDurableJobsSurviveAServerRestart publishes durable jobs, restarts
// nats-server (same store, same port) while they are in flight, publishes
// more, and checks that every job the server acknowledged ends with exactly
// one result on the results stream once the services have reconnected.
func TestDurableJobsSurviveAServerRestart(t *testing.T) {
	requireORT(t)
	store := t.TempDir()
	srv, err := natsembed.StartServer(natsembed.ServerConfig{Port: -1, StoreDir: store})
	if err != nil {
		t.Fatal(err)
	}
	url := srv.ClientURL()
	var tcpPort int
	if _, err := fmt.Sscanf(url, "nats://127.0.0.1:%d", &tcpPort); err != nil {
		t.Fatalf("server url %q: %v", url, err)
	}
	current := srv
	t.Cleanup(func() {
		current.Shutdown()
		current.WaitForShutdown()
	})

	sys := startConfig(t, system.Config{NATSURL: url})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	images := testImages(t)
	js, err := jetstream.New(sys.Conn)
	if err != nil {
		t.Fatal(err)
	}
	codec := wire.NewCodec()
	const client, perPhase = "restart", 150
	accepted := map[string]bool{}
	publish := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			id := fmt.Sprintf("job-%d", i)
			body, err := codec.EncodeRequest(&wire.Request{ID: id, Input: wire.FP32Tensor(sys.Plan.Input.Shape, images.Item(i)), TimeoutMs: 120_000})
			if err != nil {
				t.Fatal(err)
			}
			// A publish may fail while the server is away; the producer
			// retries with the same id, and the stream's dedup window makes
			// the retry safe.
			for attempt := 0; ; attempt++ {
				pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := js.Publish(pctx, wire.JobsSubject(sys.Plan.Pipeline, client), body, jetstream.WithMsgID(id))
				pcancel()
				if err == nil {
					accepted[id] = true
					break
				}
				if ctx.Err() != nil || attempt == 60 {
					t.Fatalf("job %s not accepted: %v", id, err)
				}
				time.Sleep(250 * time.Millisecond)
			}
		}
	}
	publish(0, perPhase)

	// Restart the server on its port with its store, jobs in flight.
	if info, err := js.Stream(ctx, wire.ResultsStream); err == nil {
		t.Logf("restarting nats-server with %d of %d results written", info.CachedInfo().State.Msgs, perPhase)
	}
	current.Shutdown()
	current.WaitForShutdown()
	current, err = natsembed.StartServer(natsembed.ServerConfig{Port: tcpPort, StoreDir: store})
	if err != nil {
		t.Fatalf("restart nats-server: %v", err)
	}
	publish(perPhase, 2*perPhase)

	// Every accepted job: exactly one result.
	cons, err := js.OrderedConsumer(ctx, wire.ResultsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{wire.ResultSubject(sys.Plan.Pipeline, client)},
	})
	if err != nil {
		t.Fatal(err)
	}
	results := map[string]int{}
	codes := map[string]int{}
	// Items a worker held when the server went away come back after the
	// consumer's ack wait (30 s): allow a few rounds on a slow machine.
	deadline := time.Now().Add(150 * time.Second)
	for len(results) < len(accepted) && time.Now().Before(deadline) {
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			continue // a timeout while results are still coming
		}
		var res wire.Result
		if err := wire.DecodeResult(msg.Data(), &res); err != nil {
			t.Fatalf("undecodable result: %v", err)
		}
		results[res.ID]++
		if res.Error != nil {
			codes[string(res.Error.Code)]++
		}
	}
	// Drain what else arrives for a moment: a duplicate would come late.
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		var res wire.Result
		if err := wire.DecodeResult(msg.Data(), &res); err == nil {
			results[res.ID]++
		}
	}
	missing, dup := 0, 0
	for id := range accepted {
		switch results[id] {
		case 0:
			missing++
		case 1:
		default:
			dup++
		}
	}
	if missing != 0 || dup != 0 || len(results) != len(accepted) {
		t.Fatalf("%d jobs accepted: %d without a result, %d with several, %d distinct results", len(accepted), missing, dup, len(results))
	}
	if len(codes) != 0 {
		t.Errorf("error results across the restart: %v", codes)
	}
}
