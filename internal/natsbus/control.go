package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// minBucketCheck is the shortest interval between two checks of the
// control bucket's backing stream.
const minBucketCheck = time.Second

// Why a watch of the control bucket ended; only logged.
var (
	errBucketVanished  = errors.New("the control bucket vanished")
	errBucketRecreated = errors.New("the control bucket was recreated")
)

// WatchControl follows the `plan` and `gear` keys of the control bucket
// named bucket until ctx ends, calling apply for every value, and then
// returns nil. It waits for the bucket to exist first. live is false for the
// values present when a watch opens (the state at start) and true for later
// changes. Ingress and stage workers both follow the bucket through it.
//
// A watch does not notice by itself that its bucket was deleted (a server
// restarted without its memory store, an operator deleted it) or deleted
// and created again (the controller re-applies a vanished topology): it
// stays open and sees nothing more. So every `every` (at least a second)
// WatchControl also looks at the bucket's backing stream (one stream info
// request, never one per served request). When the stream is gone or has another creation time
// than when the watch opened, or the watch broke, it stops the watch, waits
// for the bucket, binds it anew and watches again: the current values come
// first, so nothing is missed. The caller keeps its last good state
// meanwhile. A NATS error of the check itself (a timeout, the server
// restarting) keeps the watch: the client resumes it on its own when the
// stream is the same one.
//
// It returns an error only for a bucket name JetStream rejects.
func WatchControl(ctx context.Context, js jetstream.JetStream, bucket string, every time.Duration, logger *slog.Logger, apply func(key string, value []byte, live bool)) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	for {
		kv, created, err := waitBucket(ctx, js, bucket, every, logger)
		if err != nil || kv == nil {
			return err // a bad bucket name, or ctx ended (nil)
		}
		err = watchBucket(ctx, kv, created, every, apply)
		if ctx.Err() != nil {
			return nil
		}
		logger.Warn("control bucket watch ended; binding the bucket again", "bucket", bucket, "reason", err)
		if errors.Is(err, errBucketVanished) || errors.Is(err, errBucketRecreated) {
			continue // bind at once: waitBucket paces itself while it is missing
		}
		select { // the watch broke: do not retry in a hot loop
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// waitBucket binds the control bucket once it exists and returns it with
// its backing stream's creation time. It returns a nil bucket when ctx ends
// first, and an error only for a bucket name JetStream rejects.
func waitBucket(ctx context.Context, js jetstream.JetStream, bucket string, every time.Duration, logger *slog.Logger) (jetstream.KeyValue, time.Time, error) {
	t := time.NewTicker(every)
	defer t.Stop()
	logged := false
	for {
		kv, err := js.KeyValue(ctx, bucket)
		if err == nil {
			var created time.Time
			if created, err = bucketCreated(ctx, kv); err == nil {
				return kv, created, nil
			}
		}
		if errors.Is(err, jetstream.ErrInvalidBucketName) {
			return nil, time.Time{}, fmt.Errorf("control bucket %q: %w", bucket, err)
		}
		// Any other error (bucket missing, NATS restarting) means "not yet".
		if !logged {
			logger.Info("waiting for the control bucket", "bucket", bucket, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, time.Time{}, nil
		case <-t.C:
		}
	}
}

// bucketCreated returns when the bucket's backing stream was created: a
// bucket deleted and created again under the same name has another time.
func bucketCreated(ctx context.Context, kv jetstream.KeyValue) (time.Time, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return time.Time{}, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return time.Time{}, fmt.Errorf("status of bucket %s (%T) carries no stream info", kv.Bucket(), st)
	}
	return bs.StreamInfo().Created, nil
}

// watchBucket runs one watch of a bound bucket whose stream was created at
// created, until ctx ends (nil), the stream vanishes or is replaced
// (errBucketVanished, errBucketRecreated) or the watch breaks.
func watchBucket(ctx context.Context, kv jetstream.KeyValue, created time.Time, every time.Duration, apply func(string, []byte, bool)) error {
	// WatchFiltered rewrites its keys slice: pass a fresh one.
	kw, err := kv.WatchFiltered(ctx, []string{wire.KeyPlan, wire.KeyGear}, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("watch control bucket: %w", err)
	}
	defer func() { _ = kw.Stop() }()
	// The check is a JetStream API request per process; once a second
	// at most keeps many replicas from loading the server with them.
	check := time.NewTicker(max(every, minBucketCheck))
	defer check.Stop()
	live := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-kw.Updates():
			if !ok {
				return errors.New("watch control bucket: updates closed")
			}
			if e == nil { // the end of the initial values
				live = true
				continue
			}
			apply(e.Key(), e.Value(), live)
		case <-check.C:
			now, err := bucketCreated(ctx, kv)
			switch {
			case errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrBucketNotFound):
				return errBucketVanished
			case err != nil:
				// Unknown for now (NATS unreachable, a timeout): look again
				// at the next tick.
			case !now.Equal(created):
				return errBucketRecreated
			}
		}
	}
}
