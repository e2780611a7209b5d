package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/cascadeserve/cascadeserve/internal/bench"
	"github.com/cascadeserve/cascadeserve/internal/dataset"
)

// compareResult is what bench --compare and --trace report: either or
// both.
type compareResult struct {
	Comparison *bench.Comparison  `json:"comparison,omitempty"`
	Trace      *bench.TraceReport `json:"trace,omitempty"`
}

func (r *compareResult) WriteTable(w io.Writer) error {
	if r.Comparison != nil {
		if err := r.Comparison.WriteTable(w); err != nil {
			return err
		}
	}
	if r.Trace != nil {
		if r.Comparison != nil {
			fmt.Fprintln(w)
		}
		return r.Trace.WriteTable(w)
	}
	return nil
}

// compareRun is bench --compare and/or --trace. Flags left out keep the
// library's defaults (--quick's with --quick).
func (f *benchFlags) compareRun(ctx context.Context, fs *flag.FlagSet, sh benchShared) (benchRun, error) {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var systems []string
	if f.systems != "" {
		for _, s := range strings.Split(f.systems, ",") {
			s = strings.TrimSpace(s)
			if !slices.Contains(bench.CompareSystems, s) {
				return nil, fmt.Errorf("%w: --systems: unknown system %q (%s)", ErrUsage, s, strings.Join(bench.CompareSystems, ", "))
			}
			systems = append(systems, s)
		}
	}
	mult, err := parseFloats(f.multiples)
	if err != nil {
		return nil, fmt.Errorf("%w: --multiples: %w", ErrUsage, err)
	}
	cc := bench.CompareConfig{
		Live: sh.live, Systems: systems, Quick: f.quick, RequestItems: f.reqItems, Probing: bench.Probing{Warmup: sh.warmup}, Multiples: mult,
	}
	if set["knee-duration"] {
		cc.Duration = f.kneeDuration
	}
	if set["knee-budget"] {
		cc.Budget = f.kneeBudget
	}
	tc := bench.TraceConfig{
		Live: sh.live, Systems: systems, RequestItems: f.reqItems, Warmup: sh.warmup,
		Load: bench.Bursty{
			Capacity: f.traceCapacity, Base: f.traceBase, Burst: f.traceBurst, BurstLength: f.traceBurstLen,
			BurstEvery: f.traceBurstEvery, Ramp: f.traceRamp, Duration: f.traceDuration,
		},
	}
	if f.traceBurstLen == 0 {
		tc.Load.BurstLength = -1 // no bursts
	}
	if f.traceRamp == 0 {
		tc.Load.Ramp = -1 // no ramp
	}
	return func(lib string, items *dataset.Set) (benchResult, error) {
		out := &compareResult{}
		if f.compare {
			cc.ONNXRuntimeLib, cc.Items = lib, items
			c, err := bench.Compare(ctx, cc)
			if err != nil {
				return nil, err
			}
			out.Comparison = c
			tc.SwitchingPlan = c.SwitchingPlan()
			if f.plots != "" {
				if err := bench.PlotComparison(c, f.plots); err != nil {
					return nil, err
				}
			}
		}
		if f.trace {
			tc.ONNXRuntimeLib, tc.Items = lib, items
			t, err := bench.Trace(ctx, tc)
			if err != nil {
				return nil, err
			}
			out.Trace = t
			if f.plots != "" {
				if err := bench.PlotTrace(t, f.plots); err != nil {
					return nil, err
				}
			}
		}
		return out, nil
	}, nil
}
