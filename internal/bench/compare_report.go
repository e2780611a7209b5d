package bench

import (
	"fmt"
	"io"
	"strings"
)

// WriteTable prints each system's iso-accuracy capacity, its ratio to the
// single model's, and what it keeps at multiples of it; the headline
// ratio last.
func (c *Comparison) WriteTable(w io.Writer) error {
	return writeReport(w, c.Environment, c.writeBody)
}

// writeBody writes the comparison's settings, each system's capacity, its
// runs at multiples and its probes, and the headline.
func (c *Comparison) writeBody(b *strings.Builder) {
	s := c.Settings
	quick := ""
	if s.Quick {
		quick = " (--quick: short probes, coarse search; a CI-sized figure, not a measurement to quote)"
	}
	fmt.Fprintf(b, "\nIso-accuracy capacity%s: the highest open-loop Poisson load (items/s) with live p95 ≤ %.0f ms,\n", quick, s.SLOP95Ms)
	floor := "the single model's measured accuracy at its capacity"
	if s.PairedFloor {
		floor = "the single model's accuracy on the same items"
	}
	fmt.Fprintf(b, "nothing lost, typed errors ≤ %.1f%% and accuracy ≥ %s − %.1f point;\n", 100*s.MaxErrorRate, floor, 100*s.AccuracyDrop)
	fmt.Fprintf(b, "probes of %.0fs warm-up + %.0fs, ×%.2g steps then bisection to %.0f%%, ≤ %.0fs per system; each system on a fresh all-in-one system\n",
		s.WarmupSeconds, s.DurationSeconds, s.Factor, 100*s.Resolution, s.BudgetSeconds)
	sm := c.Single
	fmt.Fprintf(b, "single model: %s alone, gear %s, max batch %d, max delay %g ms (batching %s); accuracy %s on the items, %.2f%% on validation\n",
		sm.Model, sm.Gear, sm.MaxBatch, sm.DelayMs, sm.Batching, orDash(100*sm.ReferenceAccuracy, "%.2f%%"), 100*sm.ValidationAccuracy)
	if len(c.Switching) > 0 {
		fmt.Fprintf(b, "model-switching plan (planner, one-model cascades): %s\n", switchingSummary(c.Switching))
	}
	b.WriteString("\n")
	tw := newTable(b)
	fmt.Fprintln(tw, "SYSTEM\tSERVES\tISO-ACCURACY CAPACITY\t× SINGLE\tFIRST MISS\tP95 MS\tACCURACY\tFLOOR\tGEARS AT CAPACITY\tPROBES\tSTOPPED")
	for _, sc := range c.Systems {
		serves := sc.Plan + ", controller switching"
		if sc.Pinned != "" {
			serves = sc.Pinned + " pinned: " + sc.Cascade
		}
		capacity := capacityText(sc.CapacityQPS, sc.FirstMissQPS)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", sc.Label, serves, capacity, orDash(sc.Ratio, "%.2f×"),
			orDash(sc.FirstMissQPS, "%.0f"), orDash(sc.P95Ms, "%.1f"), orDash(100*sc.Accuracy, "%.2f%%"), orDash(100*sc.Floor, "%.2f%%"),
			gearMix(sc.ByGear), len(sc.Probes), sc.Stopped)
	}
	tw.Flush()

	if c.hasMultiples() {
		fmt.Fprintln(b, "\nAt multiples of the single model's capacity (accuracy, p95 ms; * misses the SLO, the floor or loses items)")
		tw = newTable(b)
		head := "SYSTEM"
		for _, m := range s.Multiples {
			head += fmt.Sprintf("\t%g×", m)
		}
		fmt.Fprintln(tw, head)
		for _, sc := range c.Systems {
			row := sc.Label
			for _, m := range s.Multiples {
				row += "\t" + multipleCell(sc, m)
			}
			fmt.Fprintln(tw, row)
		}
		tw.Flush()
	}

	fmt.Fprintln(b, "\nProbes, in order (items/s offered: verdict)")
	for _, sc := range c.Systems {
		parts := make([]string, len(sc.Probes))
		for i, p := range sc.Probes {
			parts[i] = fmt.Sprintf("%.0f: ok, p95 %.1f ms, %.2f%%", p.Load, p.P95Ms, 100*p.Accuracy)
			if !p.OK {
				parts[i] = fmt.Sprintf("%.0f: %s", p.Load, p.Reason)
			}
		}
		fmt.Fprintf(b, "%s: %s\n", sc.System, strings.Join(parts, "; "))
	}
	if c.Headline > 0 {
		fmt.Fprintf(b, "\nheadline: CascadeServe / single model = %.2f× iso-accuracy capacity (target ≥ 3×), %.0fs\n", c.Headline, s.Seconds)
	} else {
		fmt.Fprintf(b, "\nheadline: not measured (CascadeServe or the single model has no capacity), %.0fs\n", s.Seconds)
	}
}

func (c *Comparison) hasMultiples() bool {
	for _, sc := range c.Systems {
		if len(sc.AtMultiples) > 0 {
			return true
		}
	}
	return false
}

// multipleCell is a system's accuracy and p95 at multiple m: "-" when not
// measured.
func multipleCell(sc SystemCapacity, m float64) string {
	for _, p := range sc.AtMultiples {
		if p.Multiple != m {
			continue
		}
		mark := ""
		if !p.OK {
			mark = "*"
		}
		if p.Run.Aborted {
			return fmt.Sprintf("overloaded%s (%.2f%%)", mark, 100*p.Accuracy)
		}
		return fmt.Sprintf("%.2f%%, %.1f%s", 100*p.Accuracy, p.P95Ms, mark)
	}
	return "-"
}

// WriteTable prints each system's replay of the trace.
func (t *TraceReport) WriteTable(w io.Writer) error {
	return writeReport(w, t.Environment, t.writeBody)
}

// writeBody writes the trace, each system's replay of it, their switches
// and their p95 second by second.
func (t *TraceReport) writeBody(b *strings.Builder) {
	l := t.Load
	fmt.Fprintf(b, "\nBursty trace, %v per system: Poisson at %.0f%% of %.0f items/s (%.0f/s), bursts to %g× (%.0f/s) for %v every %v,\n",
		l.Duration, 100*l.Base, l.Capacity, l.Capacity*l.Base, l.Burst, l.Capacity*l.Base*l.Burst, l.BurstLength, l.BurstEvery)
	fmt.Fprintf(b, "the base ramping up from a quarter over the first %.0f%% and down over the last; SLO p95 ≤ %.0f ms per second (by send time)\n\n",
		100*l.Ramp, t.SLOP95Ms)
	tw := newTable(b)
	fmt.Fprintln(tw, "SYSTEM\tSERVES\tITEMS\tACCURACY\tP95 MS\tP99 MS\tSECONDS P95 > SLO\tERRORS\tLOST\tSWITCHES\tAPPLY P50 / P99 MS (P99 ≤)")
	for _, s := range t.Systems {
		serves := s.Plan + ", controller switching"
		if s.Pinned != "" {
			serves = s.Pinned + " pinned"
		}
		apply := "-"
		if a := s.ApplyLatency; a.Count > 0 {
			bound := "above the histogram"
			if a.P99BoundMs > 0 {
				bound = fmt.Sprintf("%.1f", a.P99BoundMs)
			}
			apply = fmt.Sprintf("%.1f / %.1f (%s), %d applied", a.P50Ms, a.P99Ms, bound, a.Count)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.2f%%\t%.1f\t%.1f\t%d (%.1f%%)\t%s\t%d\t%d\t%s\n", s.Label, serves, s.Sent, 100*s.Accuracy, s.P95Ms, s.P99Ms,
			s.OverSLOSeconds, 100*s.OverSLOShare, errorText(s.Errors), s.Lost, len(s.Switches), apply)
	}
	tw.Flush()
	for _, s := range t.Systems {
		if len(s.Switches) == 0 {
			continue
		}
		parts := make([]string, 0, len(s.Switches))
		for _, sw := range s.Switches {
			parts = append(parts, fmt.Sprintf("%.1fs %s→%s", sw.AtSeconds, sw.From, sw.To))
		}
		fmt.Fprintf(b, "\n%s switches: %s", s.System, strings.Join(parts, ", "))
	}
	fmt.Fprintln(b, "\n\nPer second p95 ms (by send time; * over the SLO)")
	for _, s := range t.Systems {
		parts := make([]string, len(s.PerSecond))
		for i, sec := range s.PerSecond {
			mark := ""
			if sec.P95Ms > t.SLOP95Ms || sec.Answered == 0 && sec.Errors > 0 {
				mark = "*"
			}
			parts[i] = fmt.Sprintf("%.0f%s", sec.P95Ms, mark)
		}
		fmt.Fprintf(b, "%s: %s\n", s.System, strings.Join(parts, " "))
	}
	for _, s := range t.Systems {
		if s.System == SystemCascadeServe {
			fmt.Fprintf(b, "\nCascadeServe: %.1f%% of seconds over the SLO (target ≤ 1%%), switch apply p99 %.1f ms (target ≤ 100 ms)\n",
				100*s.OverSLOShare, s.ApplyLatency.P99Ms)
		}
	}
}
