package stageworker

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// BenchmarkWorker measures end-to-end throughput of one worker (2 runners)
// serving a three-stage MNIST cascade through a real embedded nats-server:
// each round admits 256 items (async publishes) and waits for their 256
// replies. max_batch=1 is the unbatched baseline of the same run.
//
//	go test -run '^$' -bench BenchmarkWorker -benchtime 20x ./internal/stageworker/
func BenchmarkWorker(b *testing.B) {
	for _, maxBatch := range []int{1, 32} {
		b.Run(fmt.Sprintf("max_batch=%d", maxBatch), func(b *testing.B) {
			g := gear("g", 100, maxBatch, 1, "linear", 0.9, "mlp_small", 0.8, "mlp")
			p := testPlan(b, []plan.Gear{g})
			e := startEnv(b, p)
			const round = 256
			set := images(b, round)
			codec := wire.NewCodec()
			var items []*wire.Item
			for i := range round {
				it := newItem(p, "", g.ID, set.Item(i), time.Time{})
				it.ReplyTo = replySubject
				items = append(items, it)
			}
			rep := e.listen(b, replySubject)
			w := e.startWorker(b, func(c *Config) { c.Runners = 2 }, hooks{})
			nc := e.srv.Connect(b)
			js, err := jetstream.New(nc)
			if err != nil {
				b.Fatal(err)
			}
			subject := wire.ModelSubject(p.Pipeline, "linear")
			b.ReportAllocs()
			start := time.Now()
			r := 0
			for b.Loop() {
				// Every round uses fresh ids: ids are deduplicated.
				for i, it := range items {
					it.ID = fmt.Sprintf("r%d-%d", r, i)
					it.AdmittedUnixNano = time.Now().UnixNano()
					it.EnqueuedUnixNano = it.AdmittedUnixNano
					data, err := codec.EncodeItem(it)
					if err != nil {
						b.Fatal(err)
					}
					m := nats.NewMsg(subject)
					m.Data = data
					m.Header.Set(wire.HeaderMsgID, it.ID+".linear")
					if _, err := js.PublishMsgAsync(m); err != nil {
						b.Fatal(err)
					}
				}
				<-js.PublishAsyncComplete()
				want := (r + 1) * round
				natstest.WaitFor(b, "replies", time.Minute, func() bool { _, k := rep.snapshot(); return k >= want })
				r++
			}
			elapsed := time.Since(start)
			b.ReportMetric(float64(r*round)/elapsed.Seconds(), "items/s")
			batches := w.counter("cascade_worker_batch_size_items")
			if batches > 0 {
				b.ReportMetric(w.histSum("cascade_worker_batch_size_items")/batches, "items/batch")
			}
		})
	}
}
