package ingress

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// coalescer fills envelopes with admitted items and publishes them to the
// first model's queue: one JetStream message, one store write and one
// PubAck for many items.
//
// An envelope is flushed when it holds the gear's first-stage max batch in
// items (or EnvelopeMaxItems), when its bytes reach EnvelopeMaxBytes, when
// its first item has waited EnvelopeWait, or at once when no envelope is
// awaiting its PubAck and no item waits to join it. The last rule (Nagle's)
// means an idle ingress adds no wait to a lone request, while under load
// envelopes fill while the previous one is being stored.
type coalescer struct {
	in *ingress
	// submit takes groups of tickets for one model: one item, or the
	// items of one batched request, which travel together.
	submit chan []*ticket
	// inflight counts envelopes published and not yet acknowledged; acked
	// wakes the loop when one is.
	inflight atomic.Int64
	acked    chan struct{}
	// next is the partition the next envelope of a model goes to.
	next map[string]int
	// done is closed when the coalescer stops taking items, stopped once
	// it has published (or answered) every item it took.
	done    chan struct{}
	stopped chan struct{}
}

// ticket is one item waiting for its envelope's PubAck.
type ticket struct {
	item    *wire.Item
	model   string
	size    int
	err     chan error // buffered 1
	stopped <-chan struct{}
}

// wait blocks until the item's envelope is stored (nil) or failed; an item
// the coalescer never took, because it stopped, is unavailable.
func (t *ticket) wait() error {
	select {
	case err := <-t.err:
		return err
	case <-t.stopped:
		select {
		case err := <-t.err:
			return err
		default:
			return wire.Errorf(wire.CodeUnavailable, "ingress shutting down")
		}
	}
}

// itemOverhead approximates an item's encoded bytes besides its input.
const itemOverhead = 256

func newCoalescer(in *ingress) *coalescer {
	return &coalescer{in: in, submit: make(chan []*ticket, 4096), acked: make(chan struct{}, 1),
		next: map[string]int{}, done: make(chan struct{}), stopped: make(chan struct{})}
}

// add queues an item for the first model's next envelope.
func (c *coalescer) add(it *wire.Item, model string) *ticket {
	return c.addGroup([]*wire.Item{it}, model)[0]
}

// addGroup queues items (of one batched request) for model's next
// envelope, together: they share an envelope as far as its limits allow,
// instead of the first leaving alone while the rest are still being
// admitted.
func (c *coalescer) addGroup(items []*wire.Item, model string) []*ticket {
	group := make([]*ticket, len(items))
	for i, it := range items {
		group[i] = &ticket{item: it, model: model, size: len(it.Input.Data) + itemOverhead, err: make(chan error, 1), stopped: c.stopped}
	}
	select {
	case c.submit <- group:
	case <-c.done:
		for _, t := range group {
			t.err <- wire.Errorf(wire.CodeUnavailable, "ingress shutting down")
		}
	}
	return group
}

// groupBytes is the approximate encoded size of a group's items.
func groupBytes(group []*ticket) int {
	n := 0
	for _, t := range group {
		n += t.size
	}
	return n
}

// run fills and publishes envelopes until ctx ends and every queued item
// is published.
func (c *coalescer) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer close(c.stopped) // after every PubAck is answered
	defer wg.Wait()
	var carry []*ticket // first group of the next envelope
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-c.submit:
			case <-ctx.Done():
				c.stop(&wg)
				return
			}
		}
		maxItems := c.maxItems(first[0].model)
		first = c.publishFull(first, maxItems, &wg)
		var batch []*ticket
		batch, carry = c.fill(ctx, first, maxItems)
		c.publish(batch, &wg)
	}
}

// stop closes intake (add answers unavailable from now on) and publishes
// what is still queued: its callers are waiting.
func (c *coalescer) stop(wg *sync.WaitGroup) {
	close(c.done)
	for {
		select {
		case g := <-c.submit:
			c.publishChunks(g, c.maxItems(g[0].model), wg)
		default:
			return
		}
	}
}

// publishFull publishes a group larger than an envelope of maxItems in
// full envelopes and returns its remainder, which starts the next (the
// group itself when it fits).
func (c *coalescer) publishFull(group []*ticket, maxItems int, wg *sync.WaitGroup) []*ticket {
	if len(group) <= maxItems {
		return group
	}
	full := len(group) - len(group)%maxItems
	if full == len(group) {
		full -= maxItems
	}
	c.publishChunks(group[:full], maxItems, wg)
	return group[full:]
}

// fill grows an envelope from its first group with the groups submitted
// for the same model until it holds maxItems items or EnvelopeMaxBytes,
// its first item has waited EnvelopeWait, ctx ends, or no envelope is
// awaiting its PubAck and no group is waiting (then it goes at once).
// It returns the envelope and the group that did not join it (nil if
// none), which starts the next.
func (c *coalescer) fill(ctx context.Context, first []*ticket, maxItems int) (batch, carry []*ticket) {
	model := first[0].model
	batch, bytes := first, groupBytes(first)
	var timer *time.Timer
	// take adds g to the envelope, or keeps it for the next one when
	// it is for another model or does not fit; false: flush now.
	take := func(g []*ticket) bool {
		size := groupBytes(g)
		if g[0].model != model || len(batch)+len(g) > maxItems || bytes+size > c.in.cfg.EnvelopeMaxBytes {
			carry = g
			return false
		}
		batch, bytes = append(batch, g...), bytes+size
		return true
	}
fill:
	for len(batch) < maxItems && bytes < c.in.cfg.EnvelopeMaxBytes {
		select {
		case g := <-c.submit:
			if !take(g) {
				break fill
			}
			continue
		default:
		}
		if c.inflight.Load() == 0 {
			break // nothing being stored and nothing waiting: go now
		}
		if timer == nil {
			timer = time.NewTimer(c.in.cfg.EnvelopeWait - c.in.now().Sub(time.Unix(0, first[0].item.AdmittedUnixNano)))
		}
		select {
		case g := <-c.submit:
			if !take(g) {
				break fill
			}
		case <-c.acked:
		case <-timer.C:
			break fill
		case <-ctx.Done():
			break fill
		}
	}
	if timer != nil {
		timer.Stop()
	}
	return batch, carry
}

// publishChunks publishes tickets as envelopes of at most n items.
func (c *coalescer) publishChunks(tickets []*ticket, n int, wg *sync.WaitGroup) {
	for len(tickets) > 0 {
		k := min(n, len(tickets))
		c.publish(tickets[:k], wg)
		tickets = tickets[k:]
	}
}

// maxItems is the most items of an envelope to model: EnvelopeMaxItems, or
// the model's max batch in the current gear.
func (c *coalescer) maxItems(model string) int {
	if n := c.in.cfg.EnvelopeMaxItems; n > 0 {
		return n
	}
	if s := c.in.ctl.Load(); s != nil {
		return max(s.MaxBatch(model), 1)
	}
	return 1
}

// publish sends one envelope asynchronously; a goroutine of wg waits for
// its PubAck and answers every ticket.
func (c *coalescer) publish(batch []*ticket, wg *sync.WaitGroup) {
	in := c.in
	model := batch[0].model
	env := &wire.Envelope{ID: "e" + nuid.Next(), Items: make([]wire.Item, len(batch))}
	for i, t := range batch {
		env.Items[i] = *t.item
	}
	fail := func(err error) {
		for _, t := range batch {
			t.err <- err
		}
	}
	body, err := in.codec.EncodeEnvelope(env)
	if err != nil {
		fail(wire.Errorf(wire.CodeInternal, "encode envelope: %v", err))
		return
	}
	partitions := 1
	if s := in.ctl.Load(); s != nil {
		partitions = s.Plan.QueuePartitions()
	}
	part := c.next[model] % partitions
	c.next[model] = part + 1
	msg := &nats.Msg{Subject: wire.ModelPartitionSubject(in.cfg.Pipeline, model, part, partitions), Data: body, Header: nats.Header{}}
	msg.Header.Set(wire.HeaderMsgID, env.ID)
	msg.Header.Set(wire.HeaderExpectedStream, wire.ModelPartitionStream(in.cfg.Pipeline, model, part, partitions))
	f, err := in.js.PublishMsgAsync(msg)
	if err != nil {
		fail(publishError(err, model))
		return
	}
	in.metrics.envelopeItems.Observe(float64(len(batch)))
	in.envelopesN.Add(1)
	in.envelopeItemsN.Add(uint64(len(batch)))
	c.inflight.Add(1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTimer(in.cfg.PublishTimeout)
		defer t.Stop()
		var err error
		select {
		case <-f.Ok():
		case err = <-f.Err():
			err = publishError(err, model)
		case <-t.C:
			err = publishError(context.DeadlineExceeded, model)
		}
		c.inflight.Add(-1)
		select {
		case c.acked <- struct{}{}:
		default:
		}
		for _, tk := range batch {
			tk.err <- err
		}
	}()
}
