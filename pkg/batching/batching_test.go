package batching

import (
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func TestNext(t *testing.T) {
	p := Policy{MaxBatch: 32, MaxDelay: ms(5), IdleWait: ms(100)}
	tests := []struct {
		name   string
		policy Policy
		now    time.Time
		state  State
		want   Decision
	}{
		{
			name:  "idle: wait for a first item up to IdleWait",
			state: State{},
			want:  Decision{Count: 1, Wait: ms(100), Reason: ReasonIdle},
		},
		{
			name:   "idle without IdleWait falls back to MaxDelay",
			policy: Policy{MaxBatch: 8, MaxDelay: ms(3)},
			state:  State{},
			want:   Decision{Count: 1, Wait: ms(3), Reason: ReasonIdle},
		},
		{
			name:  "nothing in hand but a backlog: fill from it, waiting the max delay",
			state: State{Backlog: 10},
			want:  Decision{Count: 32, Wait: ms(5), Reason: ReasonFill},
		},
		{
			name:  "nothing in hand, backlog fills the batch: no wait",
			state: State{Backlog: 40},
			want:  Decision{Count: 32, Reason: ReasonBacklog},
		},
		{
			name:  "one in hand, just arrived: wait the whole delay for 31 more",
			now:   t0,
			state: State{InHand: 1, Since: t0},
			want:  Decision{Count: 31, Wait: ms(5), Reason: ReasonFill},
		},
		{
			name:  "delay partly used: wait the rest",
			now:   t0.Add(ms(3)),
			state: State{InHand: 4, Since: t0},
			want:  Decision{Count: 28, Wait: ms(2), Reason: ReasonFill},
		},
		{
			name:  "delay used up, nothing queued: run",
			now:   t0.Add(ms(5)),
			state: State{InHand: 4, Since: t0},
			want:  Decision{Reason: ReasonDelay},
		},
		{
			name:  "delay used up but items queued: take them without waiting",
			now:   t0.Add(ms(6)),
			state: State{InHand: 4, Since: t0, Backlog: 3},
			want:  Decision{Count: 28, Reason: ReasonBacklog},
		},
		{
			name:  "backlog covers the room: no wait even with delay left",
			now:   t0,
			state: State{InHand: 20, Since: t0, Backlog: 12},
			want:  Decision{Count: 12, Reason: ReasonBacklog},
		},
		{
			name:  "backlog short of the room: wait",
			now:   t0,
			state: State{InHand: 20, Since: t0, Backlog: 11},
			want:  Decision{Count: 12, Wait: ms(5), Reason: ReasonFill},
		},
		{
			name:  "full batch: run",
			now:   t0,
			state: State{InHand: 32, Since: t0, Backlog: 100},
			want:  Decision{Reason: ReasonFull},
		},
		{
			name:  "more than full (gear shrank the batch): run",
			now:   t0,
			state: State{InHand: 40, Since: t0},
			want:  Decision{Reason: ReasonFull},
		},
		{
			name:  "deadline caps the wait at deadline minus compute",
			now:   t0,
			state: State{InHand: 2, Since: t0, EarliestDeadline: t0.Add(ms(4)), Compute: ms(3)},
			want:  Decision{Count: 30, Wait: ms(1), Reason: ReasonFill},
		},
		{
			name:  "deadline slack larger than the delay does not extend it",
			now:   t0.Add(ms(1)),
			state: State{InHand: 2, Since: t0, EarliestDeadline: t0.Add(ms(500)), Compute: ms(3)},
			want:  Decision{Count: 30, Wait: ms(4), Reason: ReasonFill},
		},
		{
			name:  "no slack left: run now",
			now:   t0,
			state: State{InHand: 2, Since: t0, EarliestDeadline: t0.Add(ms(3)), Compute: ms(3)},
			want:  Decision{Reason: ReasonDeadline},
		},
		{
			name:  "deadline already passed: run now",
			now:   t0,
			state: State{InHand: 2, Since: t0, EarliestDeadline: t0.Add(-ms(1))},
			want:  Decision{Reason: ReasonDeadline},
		},
		{
			name:  "no slack but items queued: take them without waiting",
			now:   t0,
			state: State{InHand: 2, Since: t0, EarliestDeadline: t0.Add(ms(1)), Compute: ms(3), Backlog: 5},
			want:  Decision{Count: 30, Reason: ReasonBacklog},
		},
		{
			name:   "max delay 0 (Triton default): take what is queued, never wait",
			policy: Policy{MaxBatch: 16},
			now:    t0,
			state:  State{InHand: 1, Since: t0, Backlog: 3},
			want:   Decision{Count: 15, Reason: ReasonBacklog},
		},
		{
			name:   "max delay 0, nothing queued: run the single item",
			policy: Policy{MaxBatch: 16},
			now:    t0,
			state:  State{InHand: 1, Since: t0},
			want:   Decision{Reason: ReasonDelay},
		},
		{
			name:   "max batch 0 is taken as 1",
			policy: Policy{MaxDelay: ms(5)},
			now:    t0,
			state:  State{InHand: 1, Since: t0},
			want:   Decision{Reason: ReasonFull},
		},
		{
			name:   "max batch 1 with a backlog: pull one without waiting",
			policy: Policy{MaxBatch: 1, MaxDelay: ms(5)},
			state:  State{Backlog: 7},
			want:   Decision{Count: 1, Reason: ReasonBacklog},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			policy := tt.policy
			if policy == (Policy{}) && tt.name != "max batch 0 is taken as 1" {
				policy = p
			}
			got := policy.Next(tt.now, tt.state)
			if got != tt.want {
				t.Errorf("Next = %+v (%v), want %+v (%v)", got, got.Reason, tt.want, tt.want.Reason)
			}
			if got.Run() != (got.Count == 0) {
				t.Errorf("Run() = %v for Count %d", got.Run(), got.Count)
			}
		})
	}
}

// TestNextInvariants checks, over a grid of states, what every decision
// must respect: never more than the room left, never a wait past the max
// delay or the deadline slack.
func TestNextInvariants(t *testing.T) {
	for _, maxBatch := range []int{1, 2, 7, 64} {
		for _, delay := range []time.Duration{0, ms(0.5), ms(5)} {
			p := Policy{MaxBatch: maxBatch, MaxDelay: delay, IdleWait: ms(50)}
			for inHand := 0; inHand <= maxBatch+1; inHand++ {
				for _, backlog := range []int{0, 1, maxBatch - 1, maxBatch, 3 * maxBatch} {
					for _, elapsed := range []time.Duration{0, ms(1), ms(10)} {
						for _, slack := range []time.Duration{-ms(1), 0, ms(2), ms(100)} {
							now := t0.Add(elapsed)
							compute := ms(1)
							s := State{InHand: inHand, Since: t0, Backlog: backlog, Compute: compute,
								EarliestDeadline: now.Add(compute + slack)}
							d := p.Next(now, s)
							room := max(maxBatch-inHand, 0)
							if d.Count > room && inHand > 0 {
								t.Fatalf("%+v %+v: Count %d > room %d", p, s, d.Count, room)
							}
							if d.Count < 0 || d.Wait < 0 {
								t.Fatalf("%+v %+v: negative decision %+v", p, s, d)
							}
							if inHand > 0 && d.Wait > 0 {
								if d.Wait > delay-elapsed {
									t.Fatalf("%+v %+v: wait %v past max delay", p, s, d.Wait)
								}
								if d.Wait > slack {
									t.Fatalf("%+v %+v: wait %v past deadline slack %v", p, s, d.Wait, slack)
								}
							}
							if backlog >= room && room > 0 && inHand > 0 && d.Wait != 0 {
								t.Fatalf("%+v %+v: waits %v although the backlog fills the batch", p, s, d.Wait)
							}
						}
					}
				}
			}
		}
	}
}

// queue is a fake work queue on a fake clock: items arrive at fixed times;
// a pull of n items waiting up to w returns at the n-th available item or
// at the end of w, like a JetStream Fetch.
type queue struct {
	arrivals []time.Time // sorted; items not yet pulled
}

func (q *queue) pull(now time.Time, n int, wait time.Duration) (got []time.Time, done time.Time) {
	end := now.Add(wait)
	done = now
	for len(got) < n && len(q.arrivals) > 0 {
		a := q.arrivals[0]
		if a.After(end) {
			break
		}
		if a.After(done) {
			done = a
		}
		got = append(got, a)
		q.arrivals = q.arrivals[1:]
	}
	if len(got) < n {
		done = end
	}
	return got, done
}

func (q *queue) pending(now time.Time) int {
	n := 0
	for _, a := range q.arrivals {
		if !a.After(now) {
			n++
		}
	}
	return n
}

// TestPolicyOnFakeQueue drives the policy the way the worker does, against
// a fake queue on a fake clock, and checks the batches it forms: never above
// the max batch, no first item held past the max delay, and a burst that
// fills the batch is run at once.
func TestPolicyOnFakeQueue(t *testing.T) {
	tests := []struct {
		name     string
		policy   Policy
		arrivals []time.Duration
		want     []int // batch sizes
	}{
		{
			name:     "sparse arrivals run alone after the delay",
			policy:   Policy{MaxBatch: 4, MaxDelay: ms(2), IdleWait: ms(100)},
			arrivals: []time.Duration{ms(0), ms(10), ms(20)},
			want:     []int{1, 1, 1},
		},
		{
			name:     "arrivals within the delay share a batch",
			policy:   Policy{MaxBatch: 4, MaxDelay: ms(5), IdleWait: ms(100)},
			arrivals: []time.Duration{ms(0), ms(1), ms(2), ms(20), ms(21)},
			want:     []int{3, 2},
		},
		{
			name:     "a burst is cut into max batches",
			policy:   Policy{MaxBatch: 4, MaxDelay: ms(5), IdleWait: ms(100)},
			arrivals: []time.Duration{0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			want:     []int{4, 4, 2},
		},
		{
			name:     "no delay: what is queued at the time goes together",
			policy:   Policy{MaxBatch: 8, IdleWait: ms(100)},
			arrivals: []time.Duration{0, 0, 0, ms(1), ms(1)},
			want:     []int{3, 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := &queue{}
			for _, a := range tt.arrivals {
				q.arrivals = append(q.arrivals, t0.Add(a))
			}
			now := t0
			var sizes []int
			for steps := 0; len(q.arrivals) > 0; steps++ {
				if steps > 1000 {
					t.Fatal("no progress")
				}
				var batch []time.Time
				var since time.Time
				for {
					d := tt.policy.Next(now, State{InHand: len(batch), Since: since, Backlog: q.pending(now)})
					if d.Run() {
						break
					}
					got, done := q.pull(now, d.Count, d.Wait)
					if len(batch) == 0 && len(got) > 0 {
						// The first item is in hand when it arrives (or
						// when the pull starts, if it was already queued).
						since = got[0]
						if since.Before(now) {
							since = now
						}
					}
					now = done
					batch = append(batch, got...)
					if len(batch) == 0 && len(q.arrivals) == 0 {
						break
					}
					if len(got) == 0 && len(batch) > 0 && d.Wait == 0 {
						break
					}
				}
				if len(batch) == 0 {
					continue
				}
				if len(batch) > tt.policy.MaxBatch {
					t.Fatalf("batch of %d > max %d", len(batch), tt.policy.MaxBatch)
				}
				if held := now.Sub(since); held > tt.policy.MaxDelay {
					t.Fatalf("batch started %v after its first item was in hand, max delay %v", held, tt.policy.MaxDelay)
				}
				sizes = append(sizes, len(batch))
			}
			if len(sizes) != len(tt.want) {
				t.Fatalf("batches %v, want %v", sizes, tt.want)
			}
			for i := range sizes {
				if sizes[i] != tt.want[i] {
					t.Fatalf("batches %v, want %v", sizes, tt.want)
				}
			}
		})
	}
}

func TestReasonString(t *testing.T) {
	seen := map[string]bool{}
	for r := ReasonFull; r <= ReasonDeadline; r++ {
		s := r.String()
		if s == "unknown" || seen[s] {
			t.Errorf("reason %d: %q", r, s)
		}
		seen[s] = true
	}
	if Reason(200).String() != "unknown" {
		t.Error("out-of-range reason")
	}
}

func BenchmarkNext(b *testing.B) {
	p := Policy{MaxBatch: 64, MaxDelay: ms(5), IdleWait: ms(100)}
	states := []State{
		{},
		{InHand: 3, Since: t0, Backlog: 10, EarliestDeadline: t0.Add(ms(20)), Compute: ms(2)},
		{InHand: 3, Since: t0, Backlog: 100},
	}
	now := t0.Add(ms(1))
	b.ReportAllocs()
	var sink int
	for b.Loop() {
		for _, s := range states {
			sink += p.Next(now, s).Count
		}
	}
	_ = sink
}
