package plan

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
)

// Overheads are the measured costs of the live path outside the models:
// what `cascadeserve profile` writes into the profile file, what the
// planner copies into the plan, and what the simulator charges. ProfileFile,
// Plan and simulate.Config embed it, so the three carry the same fields under the
// same JSON names.
type Overheads struct {
	// HopOverheadMs is the time of one hop through the NATS path (publish
	// with PubAck, fetch, ack) in ms. The simulator adds it to every hop an
	// item makes: ingress → first model, model → model, model → result.
	HopOverheadMs float64 `json:"hop_overhead_ms,omitempty"`
	// ItemOverheadMs is the runner time per item spent on messaging
	// (decode, publish with PubAck, ack) at batch throughput, in ms. The
	// simulator adds it per item to every batch's service time, and the
	// planner adds it to every stage's cost.
	ItemOverheadMs float64 `json:"item_overhead_ms,omitempty"`
	// BatchOverheadMs is the runner time per batch spent on messaging
	// whatever the batch's size (the fetch's round trip to the server, the
	// wait for the batch's PubAcks), in ms; the simulator adds it to every
	// batch's service time, so small batches at high load cost what they
	// cost the workers.
	BatchOverheadMs float64 `json:"batch_overhead_ms,omitempty"`
	// RequestOverheadMs is the CPU time per request spent outside the
	// runners but on the runners' cores (one core per runner), in ms:
	// ingress, nats-server and a producer that share the machine with the
	// workers (the all-in-one `cascadeserve up`); 0 when those processes
	// run on other machines. At a load of QPS it keeps a share
	// ρ = QPS × RequestOverheadMs / (1000 × total runners) of the cores
	// busy, and the simulated runners, sharing the cores, take 1/(1−ρ)
	// times as long for every batch (processor sharing). ρ must stay below
	// 1.
	RequestOverheadMs float64 `json:"request_overhead_ms,omitempty"`
	// IdleCPUMsPerS is the CPU time per second, in ms, that the same
	// processes spend whatever the load (polling, timers); it adds
	// IdleCPUMsPerS / (1000 × total runners) to ρ. `profile --system-qps
	// a,b --system-fit` fits the line CPU(q) = IdleCPUMsPerS + q ×
	// RequestOverheadMs to the system's CPU time at several loads; 0 when
	// RequestOverheadMs carries all of it.
	IdleCPUMsPerS float64 `json:"idle_cpu_ms_per_s,omitempty"`
	// CPULoad, when it holds two or more points, replaces the line above:
	// the overhead's CPU time per second measured at several loads (`profile
	// --system-qps a,b,c,...`), read between points by linear
	// interpolation, below the first along the line from (0,
	// IdleCPUMsPerS), and above the last along the last segment. The live
	// path amortises its per-request costs as envelopes and batches fill, so
	// its CPU per request falls with the load; a constant per-request cost
	// measured at one load puts the capacity far too low (or too high).
	CPULoad []CPUPoint `json:"cpu_load,omitempty"`
	// LatencyFloorMs and LatencyFloorP95Ms are the median and 95th
	// percentile of a latency every request carries on top of the modelled
	// path, in ms, without occupying any runner: the live system's client,
	// ingress and JetStream round trips that the hops and runners leave
	// out, measured by `profile --system-qps` as the live latency at low
	// load minus the simulated latency of the same configuration. The
	// simulator draws it for each request from the log-normal law with that
	// median and 95th percentile (a constant LatencyFloorMs when the two
	// are equal or the p95 is 0). Where CPULoad's points carry floors of
	// their own, those replace it (LatencyFloorAt).
	LatencyFloorMs    float64 `json:"latency_floor_ms,omitempty"`
	LatencyFloorP95Ms float64 `json:"latency_floor_p95_ms,omitempty"`
}

// CPUPoint is the overhead's CPU time per second (ms/s, the model's compute
// taken out) measured at a load of QPS requests/s, and, where measured,
// the latency floor there.
type CPUPoint struct {
	QPS       float64 `json:"qps"`
	CPUMsPerS float64 `json:"cpu_ms_per_s"`
	// FloorMs and FloorP95Ms are the median and p95 of what the live
	// latency at this load exceeded the simulated latency of the same run
	// by (`profile --system-qps`), in ms; 0 when not measured. Every path
	// of the live system waits for a core, so the floor grows as the cores
	// fill: the simulator reads it at the share of the cores its own
	// configuration keeps busy (LatencyFloorAt).
	FloorMs    float64 `json:"floor_ms,omitempty"`
	FloorP95Ms float64 `json:"floor_p95_ms,omitempty"`
}

// LatencyFloorAt is the latency floor (median and p95, ms) where the cores
// are busy a share busy of the time, cores being as many as CPULoad's
// share refers to (the runners the simulator counts; the profile measured
// with as many). Each CPULoad point with a floor sits at the share
// CPUMsPerS / (1000 × cores); the floor is read between them by linear
// interpolation, below the first as the first's, and above the last along
// the last segment (never falling). With fewer than two such points it is
// LatencyFloorMs and LatencyFloorP95Ms, whatever the load.
func (o Overheads) LatencyFloorAt(busy float64, cores int) (median, p95 float64) {
	type point struct{ busy, median, p95 float64 }
	var pts []point
	for _, p := range o.CPULoad {
		if p.FloorP95Ms > 0 && cores > 0 {
			pts = append(pts, point{p.CPUMsPerS / (1000 * float64(cores)), p.FloorMs, p.FloorP95Ms})
		}
	}
	if len(pts) < 2 {
		return o.LatencyFloorMs, o.LatencyFloorP95Ms
	}
	slices.SortStableFunc(pts, func(a, b point) int { return cmp.Compare(a.busy, b.busy) })
	if busy <= pts[0].busy {
		return pts[0].median, pts[0].p95
	}
	for k := 1; k < len(pts); k++ {
		a, b := pts[k-1], pts[k]
		if busy > b.busy && k < len(pts)-1 {
			continue
		}
		f := 0.0
		if b.busy > a.busy {
			f = (busy - a.busy) / (b.busy - a.busy)
		}
		at := func(x, y float64) float64 {
			if f > 1 {
				return y + max(y-x, 0)*(f-1) // past the last: along the segment, never falling
			}
			return x + (y-x)*f
		}
		median, p95 = at(a.median, b.median), at(a.p95, b.p95)
		return median, max(p95, median)
	}
	return 0, 0 // not reached
}

// OverheadCPUMsPerS is the CPU time per second, in ms, that the overhead
// takes at a load of q requests/s: from CPULoad when it has two points or
// more, else q × RequestOverheadMs + IdleCPUMsPerS.
func (o Overheads) OverheadCPUMsPerS(q float64) float64 {
	pts := o.CPULoad
	if len(pts) < 2 {
		return q*o.RequestOverheadMs + o.IdleCPUMsPerS
	}
	if q <= pts[0].QPS {
		first := pts[0]
		return o.IdleCPUMsPerS + (first.CPUMsPerS-o.IdleCPUMsPerS)*max(q, 0)/first.QPS
	}
	for k := 1; k < len(pts); k++ {
		a, b := pts[k-1], pts[k]
		if q <= b.QPS || k == len(pts)-1 {
			slope := max((b.CPUMsPerS-a.CPUMsPerS)/(b.QPS-a.QPS), 0)
			return max(a.CPUMsPerS+slope*(q-a.QPS), 0)
		}
	}
	return 0 // not reached
}

// Validate reports every problem of the overheads, joined, named by their
// JSON keys (nil when there is none). Plan, ProfileFile and the
// simulator's config embed Overheads and report these among their own.
func (o Overheads) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"hop_overhead_ms", o.HopOverheadMs},
		{"item_overhead_ms", o.ItemOverheadMs},
		{"batch_overhead_ms", o.BatchOverheadMs},
		{"request_overhead_ms", o.RequestOverheadMs},
		{"idle_cpu_ms_per_s", o.IdleCPUMsPerS},
	} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			errs = append(errs, fmt.Errorf("%s must be a finite number >= 0, got %v", f.name, f.v))
		}
	}
	errs = append(errs, validFloor(o.LatencyFloorMs, o.LatencyFloorP95Ms, "latency_floor_ms", "latency_floor_p95_ms"))
	for k, p := range o.CPULoad {
		finite := !math.IsNaN(p.QPS) && !math.IsInf(p.QPS, 0) && !math.IsNaN(p.CPUMsPerS) && !math.IsInf(p.CPUMsPerS, 0)
		switch {
		case !finite || p.QPS <= 0 || p.CPUMsPerS < 0:
			errs = append(errs, fmt.Errorf("cpu_load[%d]: qps must be > 0 and cpu_ms_per_s >= 0, got %v and %v", k, p.QPS, p.CPUMsPerS))
		case k > 0 && p.QPS <= o.CPULoad[k-1].QPS:
			errs = append(errs, fmt.Errorf("cpu_load[%d]: loads must increase, got %v after %v", k, p.QPS, o.CPULoad[k-1].QPS))
		}
		if err := validFloor(p.FloorMs, p.FloorP95Ms, "floor_ms", "floor_p95_ms"); err != nil {
			errs = append(errs, fmt.Errorf("cpu_load[%d]: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// validFloor checks a latency floor's median and p95, named by their JSON
// keys.
func validFloor(median, p95 float64, medianKey, p95Key string) error {
	if median < 0 || math.IsNaN(median) || math.IsInf(median, 0) || p95 < 0 || math.IsNaN(p95) || math.IsInf(p95, 0) {
		return fmt.Errorf("%s and %s must be finite numbers >= 0, got %v and %v", medianKey, p95Key, median, p95)
	}
	if p95 > 0 && p95 < median {
		return fmt.Errorf("%s %v is below %s %v", p95Key, p95, medianKey, median)
	}
	return nil
}
