package ingress

import (
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/wire"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
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

// handleBatch admits the n items of a batched request-reply request, each
// cascaded on its own, waits for their results and answers the caller with
// one msgpack wire.Result whose Items hold them in input order. An item
// that was refused or got no result by its deadline has its typed error in
// its place; the others are answered.
func (in *ingress) handleBatch(msg *nats.Msg, req *wire.Request, n int, start time.Time) {
	c := in.ctl.Load()
	if c == nil {
		in.countRejected(doorNATS, wire.Errorf(wire.CodeUnavailable, "no plan yet"))
		in.replyError(msg, false, req, wire.Errorf(wire.CodeUnavailable, "pipeline %q is not ready", in.cfg.Pipeline))
		return
	}
	if n > in.cfg.MaxBatchItems {
		err := wire.Errorf(wire.CodeInvalidInput, "a batch of %d items exceeds the limit of %d (CASCADE_INGRESS_MAX_BATCH_ITEMS)", n, in.cfg.MaxBatchItems)
		in.countRejected(doorNATS, err)
		in.replyError(msg, false, req, err)
		return
	}
	reqs, err := splitBatch(req, n, c.Plan.Input)
	if err != nil {
		in.countRejected(doorNATS, err)
		in.replyError(msg, false, req, err)
		return
	}
	// One reply subject for the whole batch: the workers send the results
	// of its items that one batch of theirs answered as one message.
	subject, replies, cancel := in.replies.registerMany(n)
	defer cancel()
	out := &wire.Result{ID: req.ID, Pipeline: in.cfg.Pipeline, Client: req.Client, Items: make([]wire.Result, n)}
	done := make([]bool, n)
	pending := 0
	var tickets []*ticket
	var indexes []int
	deadline := time.Time{}
	for i := range reqs {
		it, first, err := in.prepare(admission{door: doorNATS, req: &reqs[i], start: start, replyTo: subject})
		if err != nil {
			in.countRejected(doorNATS, err)
			out.Items[i], done[i] = *in.itemError(req, err), true
			continue
		}
		it.ReplyBatched, it.BatchIndex = true, i
		if d := time.Unix(0, it.DeadlineUnixNano); d.After(deadline) {
			deadline = d
		}
		tickets = append(tickets, in.envelopes.add(it, first))
		indexes = append(indexes, i)
	}
	for k, tk := range tickets {
		i := indexes[k]
		if err := tk.wait(); err != nil {
			in.countRejected(doorNATS, err)
			out.Items[i], done[i] = *in.itemError(req, err), true
			continue
		}
		pending++
		in.countAdmitted(doorNATS)
		in.metrics.admission.WithLabelValues(doorNATS).Observe(in.now().Sub(start).Seconds())
	}
	timer := time.NewTimer(max(time.Until(deadline)+in.cfg.ReplyGrace, 0))
	defer timer.Stop()
collect:
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
			break collect
		case <-in.abort:
			break collect
		}
	}
	for i := range done {
		if !done[i] {
			out.Items[i] = *in.itemError(req, wire.Errorf(wire.CodeDeadlineExceeded, "no result for item %d of %s by its deadline", i, req.ID))
		}
	}
	now := in.now()
	out.AdmittedUnixNano, out.CompletedUnixNano, out.TotalNs = start.UnixNano(), now.UnixNano(), now.Sub(start).Nanoseconds()
	b, err := in.codec.EncodeResult(out)
	if err != nil {
		in.replyError(msg, false, req, wire.Errorf(wire.CodeInternal, "encode batch result: %v", err))
		return
	}
	reply := nats.NewMsg(msg.Reply)
	reply.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
	reply.Data = b
	if err := in.nc.PublishMsg(reply); err != nil {
		in.logger.Debug("reply to batch", "id", req.ID, "err", err)
	}
	in.metrics.e2e.WithLabelValues(doorNATS).Observe(now.Sub(start).Seconds())
}

// itemError is the result of one item of a batch that failed with err.
func (in *ingress) itemError(req *wire.Request, err error) *wire.Result {
	return &wire.Result{ID: req.ID, Pipeline: in.cfg.Pipeline, Client: req.Client, Error: wireError(err), CompletedUnixNano: in.now().UnixNano()}
}
