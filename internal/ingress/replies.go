package ingress

import (
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// replyMux receives the results of requests the ingress answers itself
// (HTTP, and NATS requests with a JSON body). It holds ONE wildcard
// subscription on `<inbox prefix><instance>.>`; each request gets its own subject
// under it (a fresh NUID token, never the request id, so a duplicate id
// cannot steal another caller's result) and a channel in a map. No
// subscription per request.
type replyMux struct {
	prefix string
	sub    *nats.Subscription

	mu      sync.Mutex
	waiting map[string]chan *nats.Msg
	many    map[string]struct{} // tokens of batches: kept until cancelled
}

// newReplyMux subscribes to prefix + ">" (the inbox prefix and the
// instance, ending in '.').
func newReplyMux(nc *nats.Conn, prefix string) (*replyMux, error) {
	m := &replyMux{prefix: prefix, waiting: map[string]chan *nats.Msg{}, many: map[string]struct{}{}}
	sub, err := nc.Subscribe(m.prefix+">", m.deliver)
	if err != nil {
		return nil, fmt.Errorf("subscribe reply inbox: %w", err)
	}
	// Results are small and the callback only hands them over; never drop
	// one as a slow consumer.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, fmt.Errorf("reply inbox limits: %w", err)
	}
	m.sub = sub
	return m, nil
}

func (m *replyMux) deliver(msg *nats.Msg) {
	token := msg.Subject[len(m.prefix):]
	m.mu.Lock()
	ch, ok := m.waiting[token]
	if _, many := m.many[token]; !many {
		delete(m.waiting, token)
	}
	m.mu.Unlock()
	if ok {
		select {
		case ch <- msg: // buffered: 1 for a single result, n for a batch
		default: // more messages than results expected: a repeat
		}
	}
}

// registerMany returns a fresh reply subject for the results of a batch of
// n items, which may arrive in up to n messages (workers send the results
// of one batch's items together), and the channel they arrive on; cancel
// forgets it.
func (m *replyMux) registerMany(n int) (subject string, results <-chan *nats.Msg, cancel func()) {
	token := nuid.Next()
	ch := make(chan *nats.Msg, n)
	m.mu.Lock()
	m.waiting[token] = ch
	m.many[token] = struct{}{}
	m.mu.Unlock()
	return m.prefix + token, ch, func() {
		m.mu.Lock()
		delete(m.waiting, token)
		delete(m.many, token)
		m.mu.Unlock()
	}
}

// register returns a fresh reply subject and the channel its one result
// arrives on; cancel forgets it (a late result is then dropped).
func (m *replyMux) register() (subject string, result <-chan *nats.Msg, cancel func()) {
	token := nuid.Next()
	ch := make(chan *nats.Msg, 1)
	m.mu.Lock()
	m.waiting[token] = ch
	m.mu.Unlock()
	return m.prefix + token, ch, func() {
		m.mu.Lock()
		delete(m.waiting, token)
		m.mu.Unlock()
	}
}

func (m *replyMux) close() error { return m.sub.Unsubscribe() }
