package ingress

import (
	"context"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// onRequest is the callback of the request-reply subscription. It only
// takes a slot and hands the request to a goroutine, so one slow admission
// never holds up the subscription.
func (in *ingress) onRequest(msg *nats.Msg) {
	start := in.now()
	if msg.Reply == "" {
		// Nobody to answer: a plain publish is not a request.
		in.countRejected(doorNATS, wire.Errorf(wire.CodeInvalidInput, "no reply subject"))
		in.logger.Debug("dropping a message without a reply subject", "subject", msg.Subject)
		return
	}
	if err := wire.CheckReplySubject(in.cfg.InboxPrefixes, msg.Reply); err != nil {
		// Answering would publish where the producer says: into another
		// client's results, the control bucket or a model's queue. Nothing
		// is sent; the refusal is counted and logged (at most once a second).
		in.metrics.refusedReplies.Inc()
		in.countRejected(doorNATS, wire.Errorf(wire.CodeInvalidInput, "%v", err))
		if last := in.lastRefusalLog.Load(); start.UnixNano()-last > int64(time.Second) && in.lastRefusalLog.CompareAndSwap(last, start.UnixNano()) {
			in.logger.Warn("refusing a request whose reply subject is not an inbox", "err", err)
		}
		return
	}
	// A body with binary tensor data (Inference-Header-Content-Length) is
	// an OIP request too, whatever its Content-Type.
	isJSON := wire.IsJSON(msg.Header.Get(wire.HeaderContentType)) || msg.Header.Get(wire.HeaderInferenceHeaderContentLength) != ""
	// Shed before the client library's pending limits are reached: past
	// them it drops requests without a word. Answering from a prepared
	// body costs one buffered write, far less than handling a request, so
	// the subscription drains faster than any overload fills it.
	if pmsgs, pbytes, err := msg.Sub.Pending(); err == nil && (pmsgs > in.cfg.PendingMsgs/2 || pbytes > in.cfg.PendingBytes/2) {
		in.shed(msg, isJSON, "backlog")
		return
	}
	select {
	case in.slots <- struct{}{}:
	default:
		in.shed(msg, isJSON, "in_flight")
		return
	}
	in.handlers.Add(1)
	go func() {
		defer in.handlers.Done()
		defer func() { <-in.slots }()
		in.handleRequest(msg, isJSON, start)
	}()
}

// shed answers a request overloaded without reading its body, from a
// prepared reply (it carries no id: the caller's inbox identifies the
// request).
func (in *ingress) shed(msg *nats.Msg, isJSON bool, why string) {
	in.metrics.shed.WithLabelValues(why).Inc()
	in.countRejected(doorNATS, in.overloaded.err)
	out := nats.NewMsg(msg.Reply)
	out.Header.Set(wire.HeaderError, string(wire.CodeOverloaded))
	if isJSON {
		out.Header.Set(wire.HeaderContentType, wire.ContentTypeJSON)
		out.Data = in.overloaded.json
	} else {
		out.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
		out.Data = in.overloaded.msgpack
	}
	if err := in.nc.PublishMsg(out); err != nil {
		in.logger.Debug("overloaded reply", "err", err)
	}
}

// overloadedReply is the prepared answer of shed requests.
type overloadedReply struct {
	err           *wire.Error
	msgpack, json []byte
}

func newOverloadedReply(codec *wire.Codec, pipeline, instance string) (overloadedReply, error) {
	e := wire.Errorf(wire.CodeOverloaded, "ingress %s is at its intake limit; retry later", instance)
	b, err := codec.EncodeResult(&wire.Result{Pipeline: pipeline, Error: e})
	if err != nil {
		return overloadedReply{}, err
	}
	return overloadedReply{err: e, msgpack: b, json: wire.EncodeOIPError(e)}, nil
}

// handleRequest admits one request-reply request. A msgpack request of
// one item without an Idempotency-Key carries the caller's reply subject,
// so the last stage answers the caller directly (msgpack wire.Result).
// Every other request (JSON, a batch, a key) carries one of the ingress's
// own reply subjects per item: the ingress waits for the results (keeps
// them for a key) and answers the caller itself, in the request's
// encoding: the OIP v2 JSON response for JSON (JSON both ways), one
// msgpack wire.Result (with Items for a batch) for msgpack.
func (in *ingress) handleRequest(msg *nats.Msg, isJSON bool, start time.Time) {
	var req wire.Request
	var opts wire.OIPResponseOptions
	var key string
	var hasKey bool
	var err error
	if isJSON {
		if int64(len(msg.Data)) > in.cfg.MaxBodyBytes {
			err = wire.Errorf(wire.CodeInvalidInput, "body of %d bytes exceeds the limit of %d", len(msg.Data), in.cfg.MaxBodyBytes)
		} else {
			opts, key, hasKey, err = decodeOIP(msg.Data, msg.Header.Get(wire.HeaderInferenceHeaderContentLength), msg.Header.Values(wire.HeaderIdempotencyKey), &req)
		}
	} else if err = in.decode(msg.Header.Get(wire.HeaderContentType), msg.Data, &req); err == nil {
		key, hasKey, err = idempotencyKey(msg.Header.Values(wire.HeaderIdempotencyKey))
	}
	if err != nil {
		in.countRejected(doorNATS, err)
		in.replyError(msg, isJSON, &req, err)
		return
	}
	if !isJSON && !hasKey {
		if c := in.ctl.Load(); c == nil || batchSize(req.Input, c.Plan.Input) == 0 {
			if _, err := in.admit(admission{door: doorNATS, req: &req, start: start, replyTo: msg.Reply, direct: true}); err != nil {
				in.countRejected(doorNATS, err)
				in.replyError(msg, false, &req, err)
				return
			}
			in.countAdmitted(doorNATS)
			return
		}
	}
	res, replayed, err := in.answer(context.Background(), doorNATS, &req, start, key, hasKey)
	if err != nil {
		in.replyError(msg, isJSON, &req, err)
		return
	}
	out := nats.NewMsg(msg.Reply)
	if replayed {
		out.Header.Set(wire.HeaderIdempotentReplayed, "true")
	}
	if isJSON {
		a := in.oipAnswer(res, &req, opts)
		if a.code != "" {
			out.Header.Set(wire.HeaderError, string(a.code))
		}
		if a.tail != nil {
			out.Header.Set(wire.HeaderContentType, wire.ContentTypeOctetStream)
			out.Header.Set(wire.HeaderInferenceHeaderContentLength, strconv.Itoa(len(a.header)))
			out.Data = append(a.header, a.tail...)
		} else {
			out.Header.Set(wire.HeaderContentType, wire.ContentTypeJSON)
			out.Data = a.header
		}
	} else {
		b, err := in.codec.EncodeResult(res)
		if err != nil {
			in.replyError(msg, false, &req, wire.Errorf(wire.CodeInternal, "encode result: %v", err))
			return
		}
		if res.Error != nil {
			out.Header.Set(wire.HeaderError, string(res.Error.Code))
		}
		out.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
		out.Data = b
	}
	if err := in.nc.PublishMsg(out); err != nil {
		in.logger.Debug("reply to request", "id", res.ID, "err", err)
	}
	in.metrics.e2e.WithLabelValues(doorNATS).Observe(in.now().Sub(start).Seconds())
}

// decode checks the body size and decodes a request body by content type.
func (in *ingress) decode(contentType string, body []byte, req *wire.Request) error {
	if int64(len(body)) > in.cfg.MaxBodyBytes {
		return wire.Errorf(wire.CodeInvalidInput, "body of %d bytes exceeds the limit of %d", len(body), in.cfg.MaxBodyBytes)
	}
	return wire.DecodeRequestBody(contentType, body, req)
}

// replyError answers a request-reply caller with a typed error, in the
// encoding of its request: an OIP error body for JSON, else a msgpack
// wire.Result whose Error is set. Either way the header Cascade-Error
// carries the code.
func (in *ingress) replyError(msg *nats.Msg, isJSON bool, req *wire.Request, err error) {
	e := wireError(err)
	out := nats.NewMsg(msg.Reply)
	out.Header.Set(wire.HeaderError, string(e.Code))
	if isJSON {
		out.Header.Set(wire.HeaderContentType, wire.ContentTypeJSON)
		out.Data = wire.EncodeOIPError(e)
	} else {
		res := &wire.Result{Pipeline: in.cfg.Pipeline, Error: e, CompletedUnixNano: in.now().UnixNano()}
		if req != nil {
			res.ID, res.Client = req.ID, req.Client
		}
		b, encErr := in.codec.EncodeResult(res)
		if encErr != nil {
			in.logger.Error("encode error reply", "err", encErr)
			return
		}
		out.Header.Set(wire.HeaderContentType, wire.ContentTypeMsgpack)
		out.Data = b
	}
	if err := in.nc.PublishMsg(out); err != nil {
		in.logger.Debug("error reply", "code", e.Code, "err", err)
	}
}
