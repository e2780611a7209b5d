package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamMsgs returns the number of messages stream holds.
func (s *Server) StreamMsgs(t testing.TB, stream string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, info := s.streamInfo(ctx, t, stream)
	return info.State.Msgs
}

// streamInfo returns stream and its info, asked with opts.
func (s *Server) streamInfo(ctx context.Context, t testing.TB, stream string, opts ...jetstream.StreamInfoOpt) (jetstream.Stream, *jetstream.StreamInfo) {
	t.Helper()
	st, err := s.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return st, info
}

// StoredMsgs returns every message stream holds on subject, oldest first
// (none if the subject has none). It reads them through an ordered
// consumer that it deletes at once: tests that poll would otherwise reach
// the server's consumer limit.
func (s *Server) StoredMsgs(t testing.TB, stream, subject string) []*nats.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	st, info := s.streamInfo(ctx, t, stream, jetstream.WithSubjectFilter(subject))
	total := int(info.State.Subjects[subject])
	if total == 0 {
		return nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if info := cons.CachedInfo(); info != nil {
			_ = st.DeleteConsumer(context.Background(), info.Name)
		}
	}()
	var out []*nats.Msg
	for len(out) < total {
		b, err := cons.Fetch(total-len(out), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range b.Messages() {
			out = append(out, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
			got++
		}
		if got == 0 {
			t.Fatalf("read %d of %d messages of %s on %s", len(out), total, subject, stream)
		}
	}
	return out
}
