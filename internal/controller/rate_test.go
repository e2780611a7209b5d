package controller

import (
	"math"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// sample is one stats message: instance, admitted counter, instance clock
// (ms since the scenario's start) and controller receive time (same unit;
// equal to at unless set).
type sample struct {
	inst     string
	admitted uint64
	at       int64
	recv     int64
}

func TestRateMeter(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	ms := func(n int64) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	// every returns samples of one instance every 250 ms from..to (ms) at rate
	// qps, starting from count base.
	every := func(inst string, from, to int64, base uint64, qps float64) []sample {
		var out []sample
		for at := from; at <= to; at += 250 {
			out = append(out, sample{inst: inst, admitted: base + uint64(qps*float64(at-from)/1000), at: at})
		}
		return out
	}
	cat := func(parts ...[]sample) []sample {
		var out []sample
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name      string
		samples   []sample
		now       int64
		want      float64
		instances int
	}{
		{name: "nothing", now: 1000, want: 0, instances: 0},
		{name: "one sample has no rate yet", samples: []sample{{inst: "a", admitted: 500, at: 0}}, now: 10, want: 0, instances: 1},
		{name: "steady rate", samples: every("a", 0, 3000, 1000, 200), now: 3000, want: 200, instances: 1},
		{name: "two instances add up", samples: cat(every("a", 0, 3000, 0, 200), every("b", 0, 3000, 50, 120)), now: 3000, want: 320, instances: 2},
		{
			name:    "rate follows the last window only",
			samples: cat(every("a", 0, 2000, 0, 1000), every("a", 2250, 4000, 2000+125, 100)),
			// 2000..4000 at 100 qps after a second at 1000 qps; the window
			// of the newest sample is (3000, 4000].
			now: 4000, want: 100, instances: 1,
		},
		{
			name: "restart keeps the series monotonic",
			samples: cat(every("a", 0, 2000, 10_000, 200),
				// restarted: the counter starts from 0 again at 2250.
				every("a", 2250, 4000, 50, 200)),
			now: 4000, want: 200, instances: 1,
		},
		{
			name: "restart within the window neither loses nor invents load",
			samples: []sample{
				{inst: "a", admitted: 1000, at: 0},
				{inst: "a", admitted: 1100, at: 500},
				{inst: "a", admitted: 40, at: 750}, // restart: 40 since
				{inst: "a", admitted: 90, at: 1000},
			},
			// 1000 → 1100 → (1100+40) → (1100+90): 190 over 1 s.
			now: 1000, want: 190, instances: 1,
		},
		{
			name:    "duplicates are ignored",
			samples: cat(every("a", 0, 2000, 0, 100), every("a", 1500, 2000, 150, 100)),
			now:     2000, want: 100, instances: 1,
		},
		{
			name: "a restart whose clock went backwards starts the series over",
			samples: cat(every("a", 0, 2000, 0, 100),
				// The restarted instance's clock is 10 s behind.
				func() []sample {
					s := every("a", -8000, -7000, 0, 300)
					for i := range s {
						s[i].recv = s[i].at + 10_000
					}
					return s
				}()),
			now: 2000 + 1000, want: 300, instances: 1,
		},
		{
			name:    "quiet instance is forgotten",
			samples: cat(every("a", 0, 1000, 0, 500), every("b", 0, 3500, 0, 40)),
			now:     3500, want: 40, instances: 1,
		},
		{
			name: "instance clocks may differ from the controller's",
			samples: func() []sample {
				s := every("a", 0, 2000, 0, 300)
				for i := range s {
					s[i].recv = s[i].at
					s[i].at += 3_600_000 // an hour ahead
				}
				return s
			}(),
			now: 2000, want: 300, instances: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewRateMeter(time.Second)
			for _, s := range tt.samples {
				recv := s.recv
				if recv == 0 {
					recv = s.at
				}
				m.Observe(wire.IngressStats{Instance: s.inst, Admitted: s.admitted, AtUnixNano: ms(s.at).UnixNano()}, ms(recv))
			}
			got, n := m.Rate(ms(tt.now))
			if math.Abs(got-tt.want) > 1e-6*max(1, tt.want) || n != tt.instances {
				t.Fatalf("Rate = %v qps from %d instances, want %v from %d", got, n, tt.want, tt.instances)
			}
		})
	}
}

// TestPeakHold: the highest rate within the hold, older ones forgotten;
// without a hold, each rate as it is.
func TestPeakHold(t *testing.T) {
	t0 := time.Unix(100, 0)
	h := PeakHold{Hold: 3 * time.Second}
	for i, tt := range []struct {
		at        time.Duration
		qps, want float64
	}{
		{0, 100, 100},
		{time.Second, 300, 300},
		{2 * time.Second, 50, 300},
		{4 * time.Second, 40, 300}, // 300 at 1s is 3s old: still held
		{4*time.Second + time.Millisecond, 30, 50},
		{9 * time.Second, 10, 10},
	} {
		if got := h.Add(t0.Add(tt.at), tt.qps); got != tt.want {
			t.Errorf("step %d at %v: peak %v, want %v", i, tt.at, got, tt.want)
		}
	}
	var none PeakHold
	if got := none.Add(t0, 7); got != 7 {
		t.Errorf("no hold: %v, want 7", got)
	}
}

func TestRateMeterItemsPerEnvelope(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	m := NewRateMeter(time.Second)
	observe := func(inst string, atMs int64, envelopes, items uint64) {
		at := t0.Add(time.Duration(atMs) * time.Millisecond)
		m.Observe(wire.IngressStats{Instance: inst, Admitted: items, Envelopes: envelopes, EnvelopeItems: items, AtUnixNano: at.UnixNano()}, at)
	}
	now := t0.Add(3 * time.Second)
	if got := m.ItemsPerEnvelope(now); got != 0 {
		t.Errorf("no instance: %v items per envelope, want 0 (unknown)", got)
	}
	// a: 100 envelopes of 2 items in its first second, then 50 of 8 within
	// the window of its newest sample; b: 10 envelopes of 3 items.
	observe("a", 0, 0, 0)
	observe("a", 1000, 100, 200)
	observe("a", 2000, 150, 600)
	observe("a", 3000, 200, 1000)
	observe("b", 2000, 40, 120)
	observe("b", 3000, 50, 150)
	if got, want := m.ItemsPerEnvelope(now), float64(400+30)/float64(50+10); math.Abs(got-want) > 1e-9 {
		t.Errorf("items per envelope %v, want %v: the window's items over its envelopes, over every instance", got, want)
	}
	// A restart keeps the series monotonic: 5 envelopes of 4 items since.
	observe("a", 3500, 5, 20)
	if got, want := m.ItemsPerEnvelope(now.Add(500*time.Millisecond)), float64(20+50*8+30)/float64(5+50+10); math.Abs(got-want) > 1e-9 {
		t.Errorf("after a restart: %v items per envelope, want %v", got, want)
	}
}

func TestRateMeterRateOverAShortWindow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	m := NewRateMeter(time.Second)
	// 1000 qps for a second, then 4000 qps for 250 ms, a sample every 50 ms.
	count := uint64(0)
	for at := int64(0); at <= 1250; at += 50 {
		if at > 0 {
			if at <= 1000 {
				count += 50
			} else {
				count += 200
			}
		}
		ts := t0.Add(time.Duration(at) * time.Millisecond)
		m.Observe(wire.IngressStats{Instance: "a", Admitted: count, AtUnixNano: ts.UnixNano()}, ts)
	}
	now := t0.Add(1250 * time.Millisecond)
	if got, _ := m.RateOver(now, 250*time.Millisecond); math.Abs(got-4000) > 1e-6 {
		t.Errorf("rate over the last 250ms %v, want 4000", got)
	}
	long, _ := m.Rate(now)
	if want := float64(750*1+250*4) / 1.0; math.Abs(long-want) > 1e-6 {
		t.Errorf("rate over the window %v, want %v", long, want)
	}
}
