package ingress

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Idempotency, opt-in with the header Idempotency-Key (HTTP and NATS
// request-reply). The first request of a client with a key creates the
// key's record in the pipeline's idempotency bucket (KV Create: exactly one
// request wins, whichever ingress it reached), is admitted and answered as
// any other, and its result is written into the record. A repeat within the
// window (the bucket's TTL) watches the record: it is answered with the
// first result as soon as it is there, or with `duplicate` when that cannot
// be had by the repeat's own deadline. A first request that was refused or
// got no result deletes its record, so that a retry is admitted.

// States of an idempotency record.
const (
	idemPending = "pending" // admitted, no result yet
	idemDone    = "done"    // Result is the first request's result
	idemFailed  = "failed"  // the result could not be kept (Message says why)
)

// idemRecord is the value of a record in the idempotency bucket (JSON, so
// `nats kv get` reads it).
type idemRecord struct {
	State string `json:"state"`
	// Key is the Idempotency-Key as sent; the record's KV key is its hash.
	Key string `json:"key"`
	// Fingerprint identifies the input of the first request: a repeat
	// with another input is refused.
	Fingerprint string `json:"fingerprint"`
	// Instance is the ingress that admitted the first request.
	Instance         string `json:"instance"`
	AdmittedUnixNano int64  `json:"admitted_ns"`
	// StaleUnixNano is when a record still pending has lost its ingress
	// (it would have written the result by then): a repeat then takes the
	// key over and is admitted.
	StaleUnixNano int64        `json:"stale_ns"`
	Result        *wire.Result `json:"result,omitempty"`
	Message       string       `json:"message,omitempty"`
}

// idempotencyKey returns the Idempotency-Key among a request's header
// values: none, or exactly one valid key (wire.ValidIdempotencyKey).
func idempotencyKey(values []string) (key string, has bool, err error) {
	switch {
	case len(values) == 0:
		return "", false, nil
	case len(values) > 1:
		return "", false, wire.Errorf(wire.CodeInvalidInput, "%d %s headers, want one", len(values), wire.HeaderIdempotencyKey)
	case !wire.ValidIdempotencyKey(values[0]):
		return "", false, wire.Errorf(wire.CodeInvalidInput, "%s %q: want 1-%d visible ASCII characters", wire.HeaderIdempotencyKey, truncate(values[0], 80), wire.MaxIdempotencyKey)
	}
	return values[0], true, nil
}

// fingerprint identifies a request's input (datatype, shape and data).
func fingerprint(r *wire.Request) string {
	h := sha256.New()
	h.Write([]byte(r.Input.Datatype))
	for _, d := range r.Input.Shape {
		h.Write(binary.LittleEndian.AppendUint64(nil, uint64(d)))
	}
	h.Write(r.Input.Data)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// answer serves a request the ingress answers itself (serve), through its
// client's idempotency record when it carries an Idempotency-Key. replayed
// says the result is the first request's, answered to a repeat.
func (in *ingress) answer(ctx context.Context, door string, req *wire.Request, start time.Time, key string, hasKey bool) (res *wire.Result, replayed bool, err error) {
	if !hasKey {
		res, _, err := in.serve(ctx, door, req, start)
		return res, false, err
	}
	return in.serveKeyed(ctx, door, req, start, key)
}

// idemBucket binds the idempotency bucket, once.
func (in *ingress) idemBucket(ctx context.Context) (jetstream.KeyValue, error) {
	in.idemMu.Lock()
	defer in.idemMu.Unlock()
	if in.idemKV != nil {
		return in.idemKV, nil
	}
	kv, err := in.js.KeyValue(ctx, wire.IdempotencyBucket(in.cfg.Pipeline))
	if err != nil {
		return nil, wire.Errorf(wire.CodeUnavailable, "idempotency bucket %s: %v (the controller creates it with the topology)", wire.IdempotencyBucket(in.cfg.Pipeline), err)
	}
	in.idemKV = kv
	return kv, nil
}

// serveKeyed answers a request with an Idempotency-Key: the first of its
// client with the key is served and its result kept; a repeat gets that
// result. Refusals before the record is touched (bad client, deadline
// past, not ready) are answered as without a key.
func (in *ingress) serveKeyed(ctx context.Context, door string, req *wire.Request, start time.Time, key string) (*wire.Result, bool, error) {
	client := req.Client
	if client == "" {
		client = wire.DefaultClient
	}
	reject := func(err error) (*wire.Result, bool, error) {
		in.countRejected(door, err)
		return nil, false, err
	}
	if !wire.ValidToken(client) {
		return reject(wire.Errorf(wire.CodeInvalidInput, "client %q: want 1-64 letters, digits, '-' or '_'", truncate(client, 80)))
	}
	if c := in.ctl.Load(); c == nil || !in.ready.Load() {
		return reject(wire.Errorf(wire.CodeUnavailable, "pipeline %q is not ready (waiting for the controller's plan and topology)", in.cfg.Pipeline))
	}
	deadline, err := Deadline(req, start, in.cfg.DefaultTimeout, in.cfg.MaxTimeout)
	if err != nil {
		return reject(err)
	}
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.cfg.PublishTimeout)
	defer cancel()
	kv, err := in.idemBucket(kctx)
	if err != nil {
		return reject(err)
	}
	recKey := wire.IdempotencyRecordKey(client, key)
	rec := idemRecord{State: idemPending, Key: key, Fingerprint: fingerprint(req), Instance: in.instance}
	// Past this bound a repeat stops waiting for the first result.
	bound := deadline.Add(in.cfg.ReplyGrace)
	var takeOver uint64 // the revision of a stale record to replace
	for range 4 {
		now := in.now()
		rec.AdmittedUnixNano = now.UnixNano()
		// The first request writes its result by its deadline plus the
		// grace and two NATS round trips (admission, record) at worst.
		rec.StaleUnixNano = deadline.Add(in.cfg.ReplyGrace + 2*in.cfg.PublishTimeout).UnixNano()
		b, err := json.Marshal(rec)
		if err != nil {
			return reject(wire.Errorf(wire.CodeInternal, "idempotency record: %v", err))
		}
		var rev uint64
		if takeOver == 0 {
			rev, err = kv.Create(kctx, recKey, b)
		} else {
			rev, err = kv.Update(kctx, recKey, b, takeOver)
		}
		if err == nil {
			res, err := in.serveFirst(ctx, door, req, start, kv, recKey, rec, rev)
			return res, false, err
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return reject(wire.Errorf(wire.CodeUnavailable, "idempotency record: %v", err))
		}
		takeOver = 0
		first, err := in.awaitFirst(ctx, kv, recKey, rec, bound)
		switch {
		case err != nil:
			if ctx.Err() == nil {
				in.countRejected(door, err)
			}
			return nil, false, err
		case first.res != nil:
			res := first.res
			if req.ID != "" {
				// The id is the caller's correlation id: echo this one.
				res.ID = req.ID
				for i := range res.Items {
					res.Items[i].ID = req.ID
				}
			}
			in.metrics.requests.WithLabelValues(door, outcomeReplayed).Inc()
			return res, true, nil
		case first.stale != 0:
			in.logger.Warn("taking over an idempotency record its ingress never completed", "record", recKey, "instance", first.instance)
			takeOver = first.stale
		}
		// Released (deleted or expired) or stale: try to be the first.
	}
	return reject(wire.Errorf(wire.CodeDuplicate, "%s %q: contended by other requests; retry", wire.HeaderIdempotencyKey, truncate(key, 80)))
}

// serveFirst serves the first request of a key, whose pending record is at
// revision rev, and records its outcome: the result of an admission, or
// the record's deletion when it was refused or got no result, so that a
// retry is admitted. It keeps waiting for the result when the caller has
// gone away: a retry of the caller then finds it.
func (in *ingress) serveFirst(ctx context.Context, door string, req *wire.Request, start time.Time, kv jetstream.KeyValue, recKey string, rec idemRecord, rev uint64) (*wire.Result, error) {
	res, admitted, err := in.serve(context.WithoutCancel(ctx), door, req, start)
	kctx, cancel := context.WithTimeout(context.Background(), in.cfg.PublishTimeout)
	defer cancel()
	if res == nil || !admitted {
		if derr := kv.Delete(kctx, recKey, jetstream.LastRevision(rev)); derr != nil {
			in.logger.Warn("release an idempotency record", "record", recKey, "err", derr)
		}
		return res, err
	}
	rec.State, rec.Result = idemDone, res
	b, merr := json.Marshal(rec)
	if merr == nil {
		if _, merr = kv.Update(kctx, recKey, b, rev); merr == nil {
			return res, err
		}
	}
	// Too large for a message, or the record was taken over: tell repeats
	// rather than leave them waiting.
	in.logger.Warn("keep the result of an idempotent request", "record", recKey, "err", merr)
	rec.State, rec.Result, rec.Message = idemFailed, nil, merr.Error()
	if b, err := json.Marshal(rec); err == nil {
		_, _ = kv.Update(kctx, recKey, b, rev)
	}
	return res, err
}

// firstOutcome is what a repeat learns about the first request of its key:
// its result, or that the record is stale (the revision to take over), or
// neither (the record was released: try to be the first).
type firstOutcome struct {
	res      *wire.Result
	stale    uint64
	instance string
}

// awaitFirst watches the record of a repeated key until the first result
// is there, the record is released or stale, or bound passes (duplicate).
// A repeat whose input differs from the first's is invalid_input.
func (in *ingress) awaitFirst(ctx context.Context, kv jetstream.KeyValue, recKey string, mine idemRecord, bound time.Time) (firstOutcome, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := kv.Watch(wctx, recKey)
	if err != nil {
		return firstOutcome{}, wire.Errorf(wire.CodeUnavailable, "watch idempotency record: %v", err)
	}
	defer func() { _ = w.Stop() }()
	timer := time.NewTimer(max(bound.Sub(in.now()), 0))
	defer timer.Stop()
	var (
		seen     bool
		pending  uint64 // revision of the pending record seen last
		staleAt  time.Time
		instance string
	)
	// wake is how long to sleep: until the bound, or until the pending
	// record turns stale if that comes first.
	wake := func() time.Duration {
		if pending != 0 && staleAt.Before(bound) {
			return staleAt.Sub(in.now())
		}
		return bound.Sub(in.now())
	}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return firstOutcome{}, wire.Errorf(wire.CodeUnavailable, "watch of idempotency record %s ended", recKey)
			}
			if e == nil {
				if !seen {
					return firstOutcome{}, nil // gone before we looked: released or expired
				}
				continue
			}
			seen = true
			if e.Operation() != jetstream.KeyValuePut {
				return firstOutcome{}, nil
			}
			var rec idemRecord
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				return firstOutcome{}, wire.Errorf(wire.CodeDuplicate, "%s %q: the first request's record is unreadable: %v", wire.HeaderIdempotencyKey, truncate(mine.Key, 80), err)
			}
			if rec.Fingerprint != mine.Fingerprint {
				return firstOutcome{}, wire.Errorf(wire.CodeInvalidInput, "%s %q was first used with another input: use a new key for a new request", wire.HeaderIdempotencyKey, truncate(mine.Key, 80))
			}
			switch rec.State {
			case idemDone:
				if rec.Result != nil {
					return firstOutcome{res: rec.Result}, nil
				}
			case idemFailed:
				return firstOutcome{}, wire.Errorf(wire.CodeDuplicate, "%s %q: the first request's result could not be kept (%s)", wire.HeaderIdempotencyKey, truncate(mine.Key, 80), rec.Message)
			default:
				pending, instance, staleAt = e.Revision(), rec.Instance, time.Unix(0, rec.StaleUnixNano)
				timer.Reset(max(wake(), 0))
			}
		case <-timer.C:
			now := in.now()
			if pending != 0 && !now.Before(staleAt) {
				return firstOutcome{stale: pending, instance: instance}, nil
			}
			if now.Before(bound) {
				timer.Reset(max(wake(), 0))
				continue
			}
			return firstOutcome{}, wire.Errorf(wire.CodeDuplicate, "%s %q: the first request with this key is still in flight; its result was not known by this request's deadline", wire.HeaderIdempotencyKey, truncate(mine.Key, 80))
		case <-in.abort:
			return firstOutcome{}, wire.Errorf(wire.CodeUnavailable, "ingress shutting down before the first result of %s %q", wire.HeaderIdempotencyKey, truncate(mine.Key, 80))
		case <-ctx.Done():
			return firstOutcome{}, ctx.Err()
		}
	}
}
