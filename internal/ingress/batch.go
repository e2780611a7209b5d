package ingress

import (
	"context"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// batchSize returns N when t is a batch of N > 1 items of the item shape
// (shape [N, item shape...]), else 0: one item, or a shape Canonicalize
// will refuse.
func batchSize(t wire.Tensor, in plan.Input) int {
	if len(t.Shape) == len(in.Shape)+1 && t.Shape[0] > 1 && slices.Equal(t.Shape[1:], in.Shape) {
		return int(t.Shape[0])
	}
	return 0
}

// hasBatchAxis reports whether t's shape is the item shape with a leading
// batch axis (of any size): the answer then has a row axis too.
func hasBatchAxis(t wire.Tensor, in plan.Input) bool {
	return len(t.Shape) == len(in.Shape)+1 && slices.Equal(t.Shape[1:], in.Shape)
}

// splitBatch returns the n requests of a batched request, one item each:
// the same id, deadline, client and options, the input's rows. It checks
// the data's size; each row is validated on admission.
func splitBatch(r *wire.Request, n int, in plan.Input) ([]wire.Request, error) {
	size := wire.DatatypeSize(r.Input.Datatype)
	row := in.Elements() * size
	if size == 0 || len(r.Input.Data) != n*row {
		return nil, wire.Errorf(wire.CodeInvalidInput, "data has %d bytes, shape %v of %s needs %d", len(r.Input.Data), r.Input.Shape, r.Input.Datatype, n*row)
	}
	out := make([]wire.Request, n)
	for i := range out {
		out[i] = *r
		out[i].Input = wire.Tensor{Datatype: r.Input.Datatype, Shape: in.Shape, Data: r.Input.Data[i*row : (i+1)*row : (i+1)*row]}
	}
	return out, nil
}

// serve admits a request the ingress answers itself (HTTP, JSON over
// NATS, batches and keyed requests over NATS) and waits for its result:
// one item's result, or for a batch (an input of shape [N, item shape...],
// N > 1) one wire.Result whose Items hold the N results in input order.
//
// err is the typed error of a request that was refused as a whole or got
// no result (deadline_exceeded past its deadline plus ReplyGrace,
// unavailable at shutdown), or ctx's error when the caller went away.
// admitted says whether res is the result of an admission (some item
// reached the first stage): only such results are kept for an
// Idempotency-Key.
func (in *ingress) serve(ctx context.Context, door string, req *wire.Request, start time.Time) (res *wire.Result, admitted bool, err error) {
	if c := in.ctl.Load(); c != nil {
		if n := batchSize(req.Input, c.Plan.Input); n > 0 {
			return in.serveBatch(ctx, door, req, n, start)
		}
	}
	subject, ch, cancel := in.replies.register()
	defer cancel()
	ad, err := in.admit(admission{door: door, req: req, start: start, replyTo: subject})
	if err != nil {
		in.countRejected(door, err)
		return nil, false, err
	}
	in.countAdmitted(door)
	res, err = in.await(ctx, ch, ad.item)
	if err != nil {
		return nil, true, err
	}
	return res, true, nil
}

// serveBatch admits the n items of a batched request, each cascaded on its
// own, and waits for their results. An item that was refused or got no
// result by its deadline has its typed error in its place; the others are
// answered. A request refused as a whole (too many items, wrong size)
// returns err.
func (in *ingress) serveBatch(ctx context.Context, door string, req *wire.Request, n int, start time.Time) (*wire.Result, bool, error) {
	c := in.ctl.Load()
	if n > in.cfg.MaxBatchItems {
		err := wire.Errorf(wire.CodeInvalidInput, "a batch of %d items exceeds the limit of %d (CASCADE_INGRESS_MAX_BATCH_ITEMS)", n, in.cfg.MaxBatchItems)
		in.countRejected(door, err)
		return nil, false, err
	}
	if req.ID == "" {
		// One id for every row, as for the batch's answer.
		r := *req
		r.ID = nuid.Next()
		req = &r
	}
	reqs, err := splitBatch(req, n, c.Plan.Input)
	if err != nil {
		in.countRejected(door, err)
		return nil, false, err
	}
	// One reply subject for the whole batch: the workers send the results
	// of its items that one batch of theirs answered as one message.
	subject, replies, cancel := in.replies.registerMany(n)
	defer cancel()
	out := &wire.Result{ID: req.ID, Pipeline: in.cfg.Pipeline, Client: req.Client, Items: make([]wire.Result, n)}
	if out.Client == "" {
		out.Client = wire.DefaultClient
	}
	done := make([]bool, n)
	pending, deadline := in.admitBatch(door, req, reqs, start, subject, out, done)
	admitted := pending > 0
	if err := in.collectBatch(ctx, req, replies, deadline, pending, out, done); err != nil {
		return nil, admitted, err
	}
	for i := range done {
		if !done[i] {
			out.Items[i] = *in.itemError(req, wire.Errorf(wire.CodeDeadlineExceeded, "no result for item %d of %s by its deadline", i, req.ID))
		}
	}
	now := in.now()
	out.AdmittedUnixNano, out.CompletedUnixNano, out.TotalNs = start.UnixNano(), now.UnixNano(), now.Sub(start).Nanoseconds()
	return out, admitted, nil
}

// admitBatch admits the items of a batch (reqs, replies to subject) and
// waits until each is stored in its first model's queue or refused. A
// refused item gets its error in out and is marked done. It returns how
// many items were admitted, whose results are pending, and the latest of
// their deadlines.
func (in *ingress) admitBatch(door string, req *wire.Request, reqs []wire.Request, start time.Time, subject string,
	out *wire.Result, done []bool) (pending int, deadline time.Time) {
	// The items go to the coalescer together, one group per first model
	// (a gear switch while they are admitted can change it).
	var items []*wire.Item
	var indexes []int
	var tickets []*ticket
	first := ""
	for i := range reqs {
		it, model, err := in.prepare(admission{door: door, req: &reqs[i], start: start, replyTo: subject})
		if err != nil {
			in.countRejected(door, err)
			out.Items[i], done[i] = *in.itemError(req, err), true
			continue
		}
		it.ReplyBatched, it.BatchIndex = true, i
		if d := time.Unix(0, it.DeadlineUnixNano); d.After(deadline) {
			deadline = d
		}
		if model != first && len(items) > 0 {
			tickets = append(tickets, in.envelopes.addGroup(items, first)...)
			items = nil
		}
		first = model
		items = append(items, it)
		indexes = append(indexes, i)
	}
	if len(items) > 0 {
		tickets = append(tickets, in.envelopes.addGroup(items, first)...)
	}
	for k, tk := range tickets {
		i := indexes[k]
		if err := tk.wait(); err != nil {
			in.countRejected(door, err)
			out.Items[i], done[i] = *in.itemError(req, err), true
			continue
		}
		pending++
		in.countAdmitted(door)
		in.metrics.admission.WithLabelValues(door).Observe(in.now().Sub(start).Seconds())
	}
	return pending, deadline
}

// collectBatch puts the results that arrive on replies into out (by their
// index, once each, marking them done) until the pending ones are all in,
// the latest deadline plus ReplyGrace has passed, or shutdown gives up on
// them. It returns ctx's error if the caller went away.
func (in *ingress) collectBatch(ctx context.Context, req *wire.Request, replies <-chan *nats.Msg, deadline time.Time, pending int,
	out *wire.Result, done []bool) error {
	n := len(done)
	timer := time.NewTimer(max(deadline.Sub(in.now())+in.cfg.ReplyGrace, 0))
	defer timer.Stop()
	for pending > 0 {
		select {
		case msg := <-replies:
			var res wire.Result
			if err := wire.DecodeResultBody(msg.Header.Get(wire.HeaderContentType), msg.Data, &res); err != nil {
				in.logger.Warn("undecodable result of a batch item", "id", req.ID, "err", err)
				continue
			}
			group := []wire.Result{res}
			if msg.Header.Get(wire.HeaderResultBatch) != "" {
				group = res.Items
			}
			for _, r := range group {
				if r.Index >= 0 && r.Index < n && !done[r.Index] {
					out.Items[r.Index], done[r.Index] = r, true
					pending--
				}
			}
		case <-timer.C:
			return nil
		case <-in.abort:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// itemError is the result of one item of a batch that failed with err.
func (in *ingress) itemError(req *wire.Request, err error) *wire.Result {
	return &wire.Result{ID: req.ID, Pipeline: in.cfg.Pipeline, Client: req.Client, Error: wireError(err), CompletedUnixNano: in.now().UnixNano()}
}
