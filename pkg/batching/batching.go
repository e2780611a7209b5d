// Package batching decides how a stage worker pulls its next batch: how many
// items to ask the queue for and how long that pull may wait. It is a pure
// value with an injectable clock (every call takes now), so it is tested on a
// fake clock and the loop that owns sockets and timers stays thin.
//
// # Policy
//
// The policy is Triton's dynamic batcher mapped onto a pull consumer. A gear
// sets two knobs per model, the max batch and the max queue delay:
//
//   - A batch never holds more than MaxBatch items.
//   - The batch's clock starts when its first item is in hand (State.Since),
//     as Triton's max_queue_delay starts with the oldest request. The worker
//     waits at most MaxDelay from then for the batch to fill, then runs what
//     it has. MaxDelay 0 is Triton's default: take what is queued, never wait.
//   - If the queue is known to hold enough items to fill the batch
//     (State.Backlog, e.g. the NumPending of the last message pulled), there
//     is nothing to wait for: pull them without waiting. The backlog is only
//     a hint; a pull that waits 0 takes what is there and returns at once.
//   - Deadlines cap the wait: the earliest deadline among the items in hand,
//     minus the expected compute (State.Compute, from the model's profile),
//     is the last moment the batch can start. The policy never waits past it;
//     once it has passed, the batch runs at once with what is in hand (plus,
//     without waiting, what is already queued, since Compute is the estimate
//     for a full batch).
//   - With nothing in hand and nothing known to be queued, the worker waits
//     for a first item with a pull of one item lasting at most IdleWait; the
//     batch starts when that item arrives. IdleWait only bounds how long a
//     pull blocks (and so how soon the caller looks at other queues or
//     notices shutdown); it never delays an item.
//
// A pull of Count items with Wait > 0 completes as soon as Count items have
// arrived or Wait has passed, whichever is first; Wait == 0 means "only what
// is available now" (jetstream FetchNoWait). Count == 0 means "stop pulling
// and run the batch in hand".
package batching

import "time"

// Policy holds a model's batching knobs in the current gear. The zero value
// is usable: MaxBatch below 1 is taken as 1.
type Policy struct {
	// MaxBatch is the most items one batch holds.
	MaxBatch int
	// MaxDelay is the longest the first item of a batch waits for the batch
	// to fill (Triton's max_queue_delay).
	MaxDelay time.Duration
	// IdleWait is the longest one pull for a first item blocks when nothing
	// is in hand and nothing is known to be queued. 0 means MaxDelay.
	IdleWait time.Duration
}

// State is what the caller knows when it decides the next pull.
type State struct {
	// InHand is the number of items already pulled for this batch.
	InHand int
	// Since is when the first item in hand arrived; ignored when InHand is 0.
	Since time.Time
	// Backlog is the number of items known to wait in the queue (the
	// NumPending of the last message pulled), 0 or less when unknown.
	Backlog int
	// EarliestDeadline is the earliest deadline of the items in hand; zero
	// when none has one.
	EarliestDeadline time.Time
	// Compute is the expected time from the start of the batch to its
	// results being published: the model's latency at a full batch plus
	// publish overhead.
	Compute time.Duration
}

// Reason says why a Decision was made; it is for metrics, logs and tests.
type Reason uint8

// Reasons.
const (
	// ReasonFull: the batch holds MaxBatch items; run it.
	ReasonFull Reason = iota
	// ReasonIdle: nothing in hand or known queued; pull one item, waiting up
	// to IdleWait.
	ReasonIdle
	// ReasonBacklog: enough (or, with no time left to wait, some) items are
	// known to be queued; pull them without waiting.
	ReasonBacklog
	// ReasonFill: wait up to Wait for the batch to fill.
	ReasonFill
	// ReasonDelay: the max delay has passed and nothing is known queued;
	// run the batch in hand.
	ReasonDelay
	// ReasonDeadline: waiting any longer would miss the earliest deadline in
	// hand; run the batch in hand.
	ReasonDeadline
)

func (r Reason) String() string {
	switch r {
	case ReasonFull:
		return "full"
	case ReasonIdle:
		return "idle"
	case ReasonBacklog:
		return "backlog"
	case ReasonFill:
		return "fill"
	case ReasonDelay:
		return "delay"
	case ReasonDeadline:
		return "deadline"
	}
	return "unknown"
}

// Decision is the next pull: ask for Count items and wait at most Wait for
// them. Count 0 means run the batch in hand now.
type Decision struct {
	Count  int
	Wait   time.Duration
	Reason Reason
}

// Run reports whether the decision is to stop pulling and run the batch.
func (d Decision) Run() bool { return d.Count == 0 }

// Next decides the next pull at time now. It allocates nothing.
func (p Policy) Next(now time.Time, s State) Decision {
	maxBatch := max(p.MaxBatch, 1)
	room := maxBatch - max(s.InHand, 0)
	if room <= 0 {
		return Decision{Reason: ReasonFull}
	}
	if s.InHand <= 0 && s.Backlog <= 0 {
		idle := p.IdleWait
		if idle <= 0 {
			idle = p.MaxDelay
		}
		return Decision{Count: 1, Wait: idle, Reason: ReasonIdle}
	}
	if s.Backlog >= room {
		return Decision{Count: room, Reason: ReasonBacklog}
	}

	// Time left to wait for the batch to fill: what remains of the max
	// delay since the first item arrived, capped by the deadline slack.
	wait := p.MaxDelay
	if s.InHand > 0 && !s.Since.IsZero() {
		wait -= now.Sub(s.Since)
	}
	reason := ReasonDelay
	if s.InHand > 0 && !s.EarliestDeadline.IsZero() {
		if slack := s.EarliestDeadline.Sub(now) - s.Compute; slack < wait {
			wait, reason = slack, ReasonDeadline
		}
	}
	if wait > 0 {
		return Decision{Count: room, Wait: wait, Reason: ReasonFill}
	}
	if s.Backlog > 0 {
		return Decision{Count: room, Reason: ReasonBacklog}
	}
	return Decision{Reason: reason}
}
