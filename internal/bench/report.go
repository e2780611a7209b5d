package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Environment records where a report was measured.
type Environment struct {
	Started     time.Time `json:"started"`
	GoVersion   string    `json:"go_version"`
	OS          string    `json:"os"`
	Arch        string    `json:"arch"`
	CPUs        int       `json:"cpus"`
	ORTVersion  string    `json:"onnxruntime_version,omitempty"`
	Pipeline    string    `json:"pipeline"`
	PlanFile    string    `json:"plan_file"`
	Runners     int       `json:"runners"`
	Partitions  int       `json:"partitions,omitempty"`
	Provider    string    `json:"provider,omitempty"`
	Description string    `json:"description,omitempty"`
}

// GearRun is the pipeline's runs at one gear: saturated (Load), at half
// that load (HalfLoad) and one request at a time (Idle).
type GearRun struct {
	Gear     string   `json:"gear"`
	Cascade  string   `json:"cascade"`
	Load     LoadRun  `json:"load"`
	HalfLoad *LoadRun `json:"half_load,omitempty"`
	Idle     *LoadRun `json:"idle,omitempty"`
}

// Ratio relates a gear's pipeline throughput to its baselines.
type Ratio struct {
	Gear string `json:"gear"`
	// PipelineQPS is the saturated pipeline's requests/s, one item each;
	// CascadeQPS the in-process cascade's; OverCascade their ratio.
	PipelineQPS float64 `json:"pipeline_qps"`
	CascadeQPS  float64 `json:"cascade_qps,omitempty"`
	OverCascade float64 `json:"pipeline_over_cascade,omitempty"`
	// FetchAckMsgs is the broker ceiling's fetch+ack msg/s on one stream;
	// OverFetchAck is PipelineQPS / FetchAckMsgs: the pipeline's items/s
	// against what one stream's consumer alone moves.
	FetchAckMsgs float64 `json:"fetch_ack_msgs_per_sec,omitempty"`
	OverFetchAck float64 `json:"pipeline_over_fetch_ack,omitempty"`
	// HopCeiling is the item-hop ceiling's hops/s (when measured);
	// OverHopCeiling is PipelineQPS / HopCeiling; HopsOverHopCeiling counts
	// every JetStream hop a request makes (one per stage it reaches).
	HopCeiling         float64 `json:"hop_ceiling_per_sec,omitempty"`
	OverHopCeiling     float64 `json:"pipeline_over_hop_ceiling,omitempty"`
	HopsOverHopCeiling float64 `json:"hops_over_hop_ceiling,omitempty"`
}

// Report is everything Run measured.
type Report struct {
	Environment Environment `json:"environment"`
	// Broker is the broker ceiling (MeasureBroker); HopCeiling the
	// item-hop ceiling (MeasureCeiling), when measured.
	Broker     *Broker      `json:"broker_ceiling,omitempty"`
	HopCeiling *Ceiling     `json:"hop_ceiling,omitempty"`
	Models     []ModelRun   `json:"models,omitempty"`
	Cascades   []CascadeRun `json:"cascades,omitempty"`
	Pipelines  []GearRun    `json:"pipelines,omitempty"`
	Ratios     []Ratio      `json:"ratios,omitempty"`
	// Baseline is the single-model gear and the gears against it.
	Baseline *Baseline `json:"baseline,omitempty"`
	// Settings echo what the run used.
	Settings RunSettings `json:"settings"`
}

// RunSettings are the effective settings of a run.
type RunSettings struct {
	ComputeSeconds  float64 `json:"compute_seconds"`
	WarmupSeconds   float64 `json:"warmup_seconds"`
	DurationSeconds float64 `json:"duration_seconds"`
	Concurrency     int     `json:"concurrency,omitempty"`
	HalfLoadSeconds float64 `json:"half_load_seconds,omitempty"`
	IdleRequests    int     `json:"idle_requests,omitempty"`
	// RequestItems is the items per request of the load runs (1 or 0:
	// one item per request); rates are items/s either way.
	RequestItems int `json:"request_items,omitempty"`
}

// perRequest says how many items each load request carried.
func (s RunSettings) perRequest() string {
	if s.RequestItems > 1 {
		return fmt.Sprintf("%d items per request", s.RequestItems)
	}
	return "one item per request"
}

// PlanCheck is the result of CheckPlan: the plan's predictions for one gear
// next to what the live pipeline did.
type PlanCheck struct {
	Environment Environment `json:"environment"`
	Gear        string      `json:"gear"`
	Cascade     string      `json:"cascade"`
	// Capacity is the rate (requests/s) the latency fractions refer to.
	Capacity float64        `json:"capacity_qps"`
	Accuracy AccuracyCheck  `json:"accuracy"`
	Latency  []LatencyCheck `json:"latency"`
}

// Pass reports whether every check met its target.
func (c *PlanCheck) Pass() bool {
	if !c.Accuracy.Pass {
		return false
	}
	for _, l := range c.Latency {
		if !l.Pass {
			return false
		}
	}
	return true
}

// AccuracyCheck compares the gear's predicted accuracy with the accuracy
// served.
type AccuracyCheck struct {
	// Predicted is the plan's accuracy for the gear (made on validation
	// data); Measured the live pipeline's over Items requests; Diff is
	// Measured − Predicted; Pass: every item answered and |Diff| ≤
	// Tolerance.
	Predicted float64 `json:"predicted"`
	Measured  float64 `json:"measured"`
	Diff      float64 `json:"diff"`
	Tolerance float64 `json:"tolerance"`
	Pass      bool    `json:"pass"`
	Items     int     `json:"items"`
	// ValidationReplay and TestReplay are the cascade's exact accuracy on
	// the replays, when available.
	ValidationReplay *float64 `json:"validation_replay,omitempty"`
	TestReplay       *float64 `json:"test_replay,omitempty"`
	Run              LoadRun  `json:"run"`
}

// LatencyCheck compares the simulator's p95 with the measured p95 at one
// rate.
type LatencyCheck struct {
	Fraction       float64 `json:"fraction"`
	QPS            float64 `json:"qps"`
	PredictedP95Ms float64 `json:"predicted_p95_ms"`
	MeasuredP95Ms  float64 `json:"measured_p95_ms"`
	// PredictedP50Ms is the simulator's median; PredictedBy its
	// percentiles of the answers of each model, to set against
	// Run.LatencyBy.
	PredictedP50Ms float64                `json:"predicted_p50_ms"`
	PredictedBy    map[string]Percentiles `json:"predicted_by,omitempty"`
	// RelErr is (measured − predicted) / predicted; Pass: no errors or
	// lost requests and |RelErr| ≤ Tolerance.
	RelErr    float64 `json:"rel_err"`
	Tolerance float64 `json:"tolerance"`
	Pass      bool    `json:"pass"`
	Run       LoadRun `json:"run"`
}

// ratios relates every saturated pipeline run to its in-process cascade
// and to the ceilings of the same report.
func ratios(rep *Report) []Ratio {
	var out []Ratio
	for _, pr := range rep.Pipelines {
		r := Ratio{Gear: pr.Gear, PipelineQPS: pr.Load.Throughput}
		if c := cascadeOf(rep, pr.Gear); c != nil && c.ItemsPerSec > 0 {
			r.CascadeQPS = c.ItemsPerSec
			r.OverCascade = r.PipelineQPS / r.CascadeQPS
		}
		if rep.Broker != nil && rep.Broker.FetchAckMsgsPerSec > 0 {
			r.FetchAckMsgs = rep.Broker.FetchAckMsgsPerSec
			r.OverFetchAck = r.PipelineQPS / r.FetchAckMsgs
		}
		if rep.HopCeiling != nil && rep.HopCeiling.Best.HopsPerSec > 0 {
			r.HopCeiling = rep.HopCeiling.Best.HopsPerSec
			r.OverHopCeiling = r.PipelineQPS / r.HopCeiling
			if pr.Load.StagesPerRequest > 0 {
				r.HopsOverHopCeiling = r.PipelineQPS * pr.Load.StagesPerRequest / r.HopCeiling
			}
		}
		out = append(out, r)
	}
	return out
}

// baselineRatios compares every measured gear but the baseline's with the
// baseline, through the pipeline and in process, where both were measured.
func baselineRatios(rep *Report) []BaselineRatio {
	b := rep.Baseline
	var out []BaselineRatio
	single := pipelineOf(rep, b.Gear)
	for _, pr := range rep.Pipelines {
		if pr.Gear == b.Gear || single == nil || !(single.Load.Throughput > 0) {
			continue
		}
		out = append(out, BaselineRatio{Gear: pr.Gear, Where: "pipeline",
			GearQPS: pr.Load.Throughput, GearAccuracy: pr.Load.Accuracy,
			SingleQPS: single.Load.Throughput, SingleAccuracy: single.Load.Accuracy,
			Speedup: pr.Load.Throughput / single.Load.Throughput})
	}
	singleIn := cascadeOf(rep, b.Gear)
	for _, c := range rep.Cascades {
		if c.Gear == b.Gear || singleIn == nil || !(singleIn.ItemsPerSec > 0) {
			continue
		}
		out = append(out, BaselineRatio{Gear: c.Gear, Where: "in-process",
			GearQPS: c.ItemsPerSec, GearAccuracy: c.Accuracy,
			SingleQPS: singleIn.ItemsPerSec, SingleAccuracy: singleIn.Accuracy,
			Speedup: c.ItemsPerSec / singleIn.ItemsPerSec})
	}
	return out
}

func cascadeOf(rep *Report, gear string) *CascadeRun {
	if i := slices.IndexFunc(rep.Cascades, func(c CascadeRun) bool { return c.Gear == gear }); i >= 0 {
		return &rep.Cascades[i]
	}
	return nil
}

func pipelineOf(rep *Report, gear string) *GearRun {
	if i := slices.IndexFunc(rep.Pipelines, func(g GearRun) bool { return g.Gear == gear }); i >= 0 {
		return &rep.Pipelines[i]
	}
	return nil
}

// WriteTable prints the report as tables: the ceilings, the in-process
// runs, the pipeline's runs, then the ratios between them.
func (r *Report) WriteTable(w io.Writer) error {
	return writeReport(w, r.Environment, func(b *strings.Builder) {
		r.writeBroker(b)
		r.writeHopCeiling(b)
		r.writeInProcess(b)
		r.writeSaturated(b)
		r.writeBelowSaturation(b)
		r.writeRatios(b)
		r.writeBaseline(b)
	})
}

// writeReport writes a report's text to w: the environment it was measured
// in, then what body writes.
func writeReport(w io.Writer, e Environment, body func(b *strings.Builder)) error {
	var b strings.Builder
	writeEnvironment(&b, e)
	body(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

// newTable is the tab writer of every table of a report, writing into b;
// each table ends with a Flush.
func newTable(b *strings.Builder) *tabwriter.Writer {
	return tabwriter.NewWriter(b, 0, 2, 2, ' ', 0)
}

// writeBroker prints the broker ceiling's rounds, when measured.
func (r *Report) writeBroker(b *strings.Builder) {
	c := r.Broker
	if c == nil {
		return
	}
	fmt.Fprintf(b, "\nBroker ceiling, measured as nats bench does: one file-backed stream; async publish of %d-byte messages, %d PubAcks awaited per window; durable pull consumer, Fetch(%d), explicit Ack of each\n",
		c.PayloadBytes, c.PubBatch, c.FetchBatch)
	tw := newTable(b)
	fmt.Fprintln(tw, "ROUND\tMESSAGES\tPUBLISH MSG/S\tFETCH+ACK MSG/S\tCHECK")
	for i, run := range c.Runs {
		check := "each once"
		if !run.Correct() {
			check = fmt.Sprintf("%d of %d pub-acked, %d missing, %d duplicated, %d redelivered, %d unacked",
				run.PubAcked, run.Messages, run.Missing, run.Duplicates, run.Redelivered, run.Unacked)
		}
		fmt.Fprintf(tw, "%d\t%d\t%.0f\t%.0f\t%s\n", i+1, run.Messages, run.PubMsgsPerSec, run.FetchMsgsPerSec, check)
	}
	tw.Flush()
	fmt.Fprintf(b, "ceiling: async publish %.0f msg/s, durable fetch + explicit ack %.0f msg/s (best rounds)\n", c.PubMsgsPerSec, c.FetchAckMsgsPerSec)
}

// writeHopCeiling prints the item-hop ceiling's runs, when measured.
func (r *Report) writeHopCeiling(b *strings.Builder) {
	c := r.HopCeiling
	if c == nil {
		return
	}
	fmt.Fprintf(b, "\nItem-hop ceiling: publish (async, Nats-Msg-Id) → Fetch(batch) → Ack, file-backed work queue, %d-byte items, %d fetchers\n",
		c.PayloadBytes, c.Best.Fetchers)
	tw := newTable(b)
	fmt.Fprintln(tw, "BATCH\tMESSAGES\tMEAN FETCH\tSECONDS\tITEM-HOPS/S\tCHECK")
	for _, run := range c.Runs {
		check := "each once"
		if run.Missing > 0 || run.Duplicates > 0 {
			check = fmt.Sprintf("%d missing, %d duplicated", run.Missing, run.Duplicates)
		}
		fmt.Fprintf(tw, "%d\t%d\t%.1f\t%.2f\t%.0f\t%s\n", run.Batch, run.Messages, run.MeanBatch, run.Seconds, run.HopsPerSec, check)
	}
	tw.Flush()
	fmt.Fprintf(b, "item-hop ceiling: %.0f item-hops/s (batch %d)\n", c.Best.HopsPerSec, c.Best.Batch)
}

// writeInProcess prints the in-process runs of the models, then of the
// cascades, when measured.
func (r *Report) writeInProcess(b *strings.Builder) {
	tw := newTable(b)
	if len(r.Models) > 0 {
		fmt.Fprintf(b, "\nIn-process ONNX Runtime, no bus (1 intra-op thread per session, %.0fs each)\n", r.Settings.ComputeSeconds)
		fmt.Fprintln(tw, "MODEL\tBATCH\tSESSIONS\tITEMS/S")
		for _, m := range r.Models {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\n", m.Model, m.Batch, m.Sessions, m.ItemsPerSec)
		}
		tw.Flush()
	}
	if len(r.Cascades) > 0 {
		fmt.Fprintln(b)
		fmt.Fprintln(tw, "GEAR\tCASCADE\tSESSIONS\tREQUESTS/S\tREACHED PER STAGE\tMEAN BATCH\tACCURACY")
		for _, c := range r.Cascades {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%s\t%s\t%.2f%%\n", c.Gear, c.Cascade, c.Sessions, c.ItemsPerSec,
				fractions(c.Reached, c.Reached[0]), floats(c.MeanBatch, 1), 100*c.Accuracy)
		}
		tw.Flush()
	}
}

// writeSaturated prints the saturated pipeline runs, when measured.
func (r *Report) writeSaturated(b *strings.Builder) {
	if len(r.Pipelines) == 0 {
		return
	}
	fmt.Fprintf(b, "\nWhole pipeline, saturated: all-in-one system per gear (gear pinned), closed loop, %s, %.0fs warm-up discarded + %.0fs measured\n",
		r.Settings.perRequest(), r.Settings.WarmupSeconds, r.Settings.DurationSeconds)
	tw := newTable(b)
	fmt.Fprintln(tw, "GEAR\tCASCADE\tIN FLIGHT\tITEMS/S\tP50 MS\tP95 MS\tP99 MS\tACCURACY\tSTAGES/REQ\tANSWERED\tERRORS\tLOST")
	for _, p := range r.Pipelines {
		l := p.Load
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%.1f\t%.1f\t%.1f\t%.2f%%\t%.2f\t%d\t%s\t%d\n", p.Gear, p.Cascade, l.Concurrency, l.Throughput,
			l.P50Ms, l.P95Ms, l.P99Ms, 100*l.Accuracy, l.StagesPerRequest, l.Answered, errorText(l.Errors), l.Lost)
	}
	tw.Flush()
}

// writeBelowSaturation prints the half-load and idle runs, when any gear
// has one.
func (r *Report) writeBelowSaturation(b *strings.Builder) {
	if !slices.ContainsFunc(r.Pipelines, func(p GearRun) bool { return p.HalfLoad != nil || p.Idle != nil }) {
		return
	}
	var parts []string
	if r.Settings.HalfLoadSeconds > 0 {
		parts = append(parts, fmt.Sprintf("open-loop Poisson at half the saturated requests/s (%.0fs warm-up discarded + %.0fs measured)",
			r.Settings.WarmupSeconds, r.Settings.HalfLoadSeconds))
	}
	if r.Settings.IdleRequests > 0 {
		parts = append(parts, fmt.Sprintf("%d requests one at a time (idle)", r.Settings.IdleRequests))
	}
	fmt.Fprintf(b, "\nBelow saturation, same system: %s\n", strings.Join(parts, ", then "))
	tw := newTable(b)
	fmt.Fprintln(tw, "GEAR\tHALF LOAD ITEMS/S\tSERVED/S\tP50 MS\tP95 MS\tP99 MS\tERRORS\tLOST\tIDLE P50 MS\tIDLE P95 MS\tIDLE ERRORS")
	for _, p := range r.Pipelines {
		half := []string{"-", "-", "-", "-", "-", "-", "-"}
		if h := p.HalfLoad; h != nil {
			half = []string{fmt.Sprintf("%.0f", h.OfferedQPS), fmt.Sprintf("%.0f", h.Throughput), fmt.Sprintf("%.1f", h.P50Ms),
				fmt.Sprintf("%.1f", h.P95Ms), fmt.Sprintf("%.1f", h.P99Ms), errorText(h.Errors), fmt.Sprint(h.Lost)}
		}
		idle := []string{"-", "-", "-"}
		if i := p.Idle; i != nil {
			idle = []string{fmt.Sprintf("%.2f", i.P50Ms), fmt.Sprintf("%.2f", i.P95Ms), lostText(i)}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Gear, strings.Join(half, "\t"), strings.Join(idle, "\t"))
	}
	tw.Flush()
}

// writeRatios prints each gear's pipeline throughput against the
// in-process cascade's and the ceilings, when related.
func (r *Report) writeRatios(b *strings.Builder) {
	if len(r.Ratios) == 0 {
		return
	}
	fmt.Fprintf(b, "\nRatios (same run, same machine; %s)\n", r.Settings.perRequest())
	hops := r.HopCeiling != nil
	head := "GEAR\tPIPELINE ITEMS/S\tFETCH+ACK MSG/S\tPIPELINE ITEMS/S ÷ FETCH+ACK MSG/S\tIN-PROCESS REQ/S\tPIPELINE/IN-PROCESS"
	if hops {
		head += "\tITEM-HOPS/S\tPIPELINE/ITEM-HOPS\tPIPELINE HOPS/ITEM-HOPS"
	}
	tw := newTable(b)
	fmt.Fprintln(tw, head)
	for _, q := range r.Ratios {
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%s\t%s", q.Gear, q.PipelineQPS, orDash(q.FetchAckMsgs, "%.0f"), orDash(q.OverFetchAck, "%.3f"),
			orDash(q.CascadeQPS, "%.0f"), orDash(q.OverCascade, "%.3f"))
		if hops {
			fmt.Fprintf(tw, "\t%s\t%s\t%s", orDash(q.HopCeiling, "%.0f"), orDash(q.OverHopCeiling, "%.3f"), orDash(q.HopsOverHopCeiling, "%.3f"))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// writeBaseline prints the gears against the single-model baseline, when
// compared.
func (r *Report) writeBaseline(b *strings.Builder) {
	bl := r.Baseline
	if bl == nil || len(bl.Versus) == 0 {
		return
	}
	fmt.Fprintf(b, "\nCascade vs single model: %s alone (gear %s, batching of %s), same run\n", bl.Model, bl.Gear, bl.BatchingOf)
	tw := newTable(b)
	fmt.Fprintln(tw, "GEAR\tMEASURED\tGEAR REQ/S\tSINGLE REQ/S\tGEAR/SINGLE\tGEAR ACCURACY\tSINGLE ACCURACY\tDIFF (POINTS)")
	for _, v := range bl.Versus {
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.2f\t%.2f%%\t%.2f%%\t%+.2f\n", v.Gear, v.Where, v.GearQPS, v.SingleQPS, v.Speedup,
			100*v.GearAccuracy, 100*v.SingleAccuracy, 100*(v.GearAccuracy-v.SingleAccuracy))
	}
	tw.Flush()
}

// WriteTable prints the check with a verdict per target.
func (c *PlanCheck) WriteTable(w io.Writer) error {
	return writeReport(w, c.Environment, c.writeBody)
}

// writeBody writes the accuracy check, the latency checks, where the time
// goes, and the verdict.
func (c *PlanCheck) writeBody(b *strings.Builder) {
	a := c.Accuracy
	fmt.Fprintf(b, "\nPredictions vs reality, gear %s (%s), pinned\n", c.Gear, c.Cascade)
	fmt.Fprintf(b, "\nAccuracy: %d items served once each (%d answered, %s errors, %d lost, %d degraded)\n",
		a.Items, a.Run.Answered, errorText(a.Run.Errors), a.Run.Lost, a.Run.Degraded)
	tw := newTable(b)
	fmt.Fprintln(tw, "SOURCE\tACCURACY")
	fmt.Fprintf(tw, "plan prediction (validation)\t%.2f%%\n", 100*a.Predicted)
	if a.ValidationReplay != nil {
		fmt.Fprintf(tw, "cascade on validation replay\t%.2f%%\n", 100**a.ValidationReplay)
	}
	if a.TestReplay != nil {
		fmt.Fprintf(tw, "cascade on test replay\t%.2f%%\n", 100**a.TestReplay)
	}
	fmt.Fprintf(tw, "live pipeline (measured)\t%.2f%%\n", 100*a.Measured)
	tw.Flush()
	fmt.Fprintf(b, "difference: %+.2f points (target within ±%.2f): %s\n", 100*a.Diff, 100*a.Tolerance, verdict(a.Pass))

	fmt.Fprintf(b, "\nLatency: Poisson arrivals at fractions of the gear's capacity (%.0f requests/s)\n", c.Capacity)
	fmt.Fprintln(tw, "LOAD\tREQ/S\tSERVED/S\tSIMULATED P95 MS\tMEASURED P95 MS\tMEASURED P50 MS\tERROR\tERRORS\tLOST\tVERDICT")
	for _, l := range c.Latency {
		fmt.Fprintf(tw, "%.0f%%\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%+.0f%%\t%s\t%d\t%s (±%.0f%%)\n", 100*l.Fraction, l.QPS, l.Run.Throughput,
			l.PredictedP95Ms, l.MeasuredP95Ms, l.Run.P50Ms, 100*l.RelErr, errorText(l.Run.Errors), l.Run.Lost, verdict(l.Pass), 100*l.Tolerance)
	}
	tw.Flush()
	if len(c.Latency) > 0 && len(c.Latency[0].PredictedBy) > 0 {
		fmt.Fprintf(b, "\nWhere the time goes: latency of the answers of each model, simulated / measured (ms)\n")
		tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "LOAD\tMODEL\tSHARE SIM/LIVE\tP50 SIM/LIVE\tP95 SIM/LIVE\t")
		for _, l := range c.Latency {
			fmt.Fprintf(tw, "%.0f%%\tall\t\t%.1f / %.1f\t%.1f / %.1f\t\n", 100*l.Fraction, l.PredictedP50Ms, l.Run.P50Ms, l.PredictedP95Ms, l.MeasuredP95Ms)
			simTotal, liveTotal := 0, 0
			for _, m := range sortedKeys(l.PredictedBy) {
				simTotal += l.PredictedBy[m].Count
				liveTotal += l.Run.LatencyBy[m].Count
			}
			for _, m := range sortedKeys(l.PredictedBy) {
				sim, live := l.PredictedBy[m], l.Run.LatencyBy[m]
				fmt.Fprintf(tw, "\t%s\t%.1f%% / %.1f%%\t%.1f / %.1f\t%.1f / %.1f\t\n", m,
					share(sim.Count, simTotal), share(live.Count, liveTotal), sim.P50Ms, live.P50Ms, sim.P95Ms, live.P95Ms)
			}
		}
		tw.Flush()
	}
	writeVerdict(b, c.Pass(), "every target met", "some targets missed")
}

func writeEnvironment(b *strings.Builder, e Environment) {
	fmt.Fprintf(b, "CascadeServe bench, %s: %s/%s, %d CPUs, %s", e.Started.Format(time.RFC3339), e.OS, e.Arch, e.CPUs, e.GoVersion)
	if e.ORTVersion != "" {
		fmt.Fprintf(b, ", ONNX Runtime %s", e.ORTVersion)
	}
	fmt.Fprintf(b, "\nplan: %s (pipeline %s), stage worker runners: %d", e.PlanFile, e.Pipeline, e.Runners)
	if e.Partitions > 1 {
		fmt.Fprintf(b, ", queue partitions: %d", e.Partitions)
	}
	if e.Provider != "" && e.Provider != "cpu" {
		fmt.Fprintf(b, ", provider %s", e.Provider)
	}
	b.WriteString("\n")
}

// share is 100 × n / total, 0 for no total.
func share(n, total int) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(n) / float64(total)
}

// writeVerdict ends a check's table with its overall verdict: met when it
// passed, missed when not.
func writeVerdict(b *strings.Builder, pass bool, met, missed string) {
	overall := met
	if !pass {
		overall = missed
	}
	fmt.Fprintf(b, "\nverdict: %s\n", overall)
}

func verdict(pass bool) string {
	if pass {
		return "PASS"
	}
	return "MISS"
}

// lostText sums a run's error results and lost requests.
func lostText(l *LoadRun) string {
	if l.Lost == 0 {
		return errorText(l.Errors)
	}
	return fmt.Sprintf("%s, %d lost", errorText(l.Errors), l.Lost)
}

func errorText(m map[string]int) string {
	if len(m) == 0 {
		return "0"
	}
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

func orDash(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

func fractions(counts []int, of int) string {
	parts := make([]string, len(counts))
	for i, c := range counts {
		parts[i] = fmt.Sprintf("%.3f", float64(c)/float64(max(of, 1)))
	}
	return strings.Join(parts, " > ")
}

func floats(v []float64, prec int) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.*f", prec, x)
	}
	return strings.Join(parts, " > ")
}
