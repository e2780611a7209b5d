package controller

import (
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// RateMeter turns the cumulative admission counters that ingress instances
// publish (wire.IngressStats) into one intake rate. It is a plain value with
// no clock or lock of its own: the caller passes receive times and guards
// concurrent use.
//
// Per instance it keeps the samples of the last window, measured on the
// instance's own clock (IngressStats.AtUnixNano), so clock skew between
// machines does not matter. The instance's rate is the counter's increase
// over the span of those samples (at least two); the intake rate is the sum
// over instances. A counter that goes backwards means the instance restarted:
// the meter keeps the series monotonic by adding the count before the restart
// as an offset, so a restart neither loses the window nor counts as a burst.
// An instance whose last message arrived more than 2 × window ago (on the
// controller's clock) is gone: it counts as zero and is forgotten.
type RateMeter struct {
	window    time.Duration
	instances map[string]*instanceSeries
}

type instanceSeries struct {
	samples  []rateSample // ascending at; adjusted counts are monotonic
	lastRaw  uint64
	offset   counters
	received time.Time // controller clock of the last message
}

type rateSample struct {
	at int64 // instance clock, unix ns
	counters
}

// counters are an instance's cumulative counters, kept monotonic across
// restarts: requests admitted, envelopes published to first stages and the
// items in them.
type counters struct {
	count, envelopes, items uint64
}

func (c counters) plus(o counters) counters {
	return counters{count: c.count + o.count, envelopes: c.envelopes + o.envelopes, items: c.items + o.items}
}

// NewRateMeter returns a meter averaging over window.
func NewRateMeter(window time.Duration) *RateMeter {
	return &RateMeter{window: window, instances: map[string]*instanceSeries{}}
}

// Observe records one stats message received at now (controller clock).
// Messages older than the instance's newest sample are ignored.
func (m *RateMeter) Observe(s wire.IngressStats, now time.Time) {
	in := m.instances[s.Instance]
	if in == nil {
		in = &instanceSeries{}
		m.instances[s.Instance] = in
	}
	in.received = now
	if n := len(in.samples); n > 0 && s.AtUnixNano <= in.samples[n-1].at {
		if s.AtUnixNano < in.samples[n-1].at && s.Admitted < in.lastRaw {
			// Restart with a clock that went backwards too: start over.
			in.samples, in.offset = nil, counters{}
		} else {
			return
		}
	}
	if len(in.samples) > 0 && s.Admitted < in.lastRaw {
		in.offset = in.samples[len(in.samples)-1].counters
	}
	in.lastRaw = s.Admitted
	raw := counters{count: s.Admitted, envelopes: s.Envelopes, items: s.EnvelopeItems}
	in.samples = append(in.samples, rateSample{at: s.AtUnixNano, counters: in.offset.plus(raw)})
	// Keep the samples within the window of the newest one, plus the newest
	// sample before it, so the rate spans the whole window.
	cut := s.AtUnixNano - m.window.Nanoseconds()
	i := 0
	for i+1 < len(in.samples) && in.samples[i+1].at <= cut {
		i++
	}
	in.samples = in.samples[i:]
}

// Rate returns the summed intake rate (requests/s) at now and the number of
// live instances, forgetting instances that have gone quiet.
func (m *RateMeter) Rate(now time.Time) (qps float64, instances int) {
	return m.RateOver(now, m.window)
}

// RateOver is Rate over the last d of each instance's samples (at most the
// meter's window): from the newest sample at least d older than the
// instance's newest, or its oldest.
func (m *RateMeter) RateOver(now time.Time, d time.Duration) (qps float64, instances int) {
	for id, in := range m.instances {
		if now.Sub(in.received) > 2*m.window {
			delete(m.instances, id)
			continue
		}
		instances++
		if len(in.samples) < 2 {
			continue
		}
		last := in.samples[len(in.samples)-1]
		first := in.samples[0]
		for _, s := range in.samples[1:] {
			if last.at-s.at < d.Nanoseconds() {
				break
			}
			first = s
		}
		span := time.Duration(last.at - first.at).Seconds()
		if span <= 0 {
			continue
		}
		qps += float64(last.count-first.count) / span
	}
	return qps, instances
}

// ItemsPerEnvelope returns the mean number of items in the envelopes the
// live ingress instances published to first stages over the window (0
// when none was published, or the instances do not report envelopes): what
// one message of a first stage's queue holds, to turn its backlog in
// messages into items.
func (m *RateMeter) ItemsPerEnvelope(now time.Time) float64 {
	var envelopes, items uint64
	for _, in := range m.instances {
		if now.Sub(in.received) > 2*m.window || len(in.samples) < 2 {
			continue
		}
		first, last := in.samples[0], in.samples[len(in.samples)-1]
		envelopes += last.envelopes - first.envelopes
		items += last.items - first.items
	}
	if envelopes == 0 {
		return 0
	}
	return float64(items) / float64(envelopes)
}

// PeakHold keeps the intake rates of the last Hold and gives their highest:
// the load the policy moves down on (Observation.PeakQPS). The zero value,
// with no hold, gives each rate back as it is. A plain value: the caller
// passes the times and guards concurrent use.
type PeakHold struct {
	Hold    time.Duration
	samples []heldRate // ascending at
}

type heldRate struct {
	at  time.Time
	qps float64
}

// Add records qps measured at now and returns the highest rate recorded
// within Hold of now, qps included.
func (h *PeakHold) Add(now time.Time, qps float64) float64 {
	if h.Hold <= 0 {
		return qps
	}
	keep := 0
	for keep < len(h.samples) && now.Sub(h.samples[keep].at) > h.Hold {
		keep++
	}
	h.samples = append(h.samples[keep:], heldRate{at: now, qps: qps})
	peak := qps
	for _, s := range h.samples {
		peak = max(peak, s.qps)
	}
	return peak
}
