// Package planner is CascadeServe's offline planner: it turns a replay
// (plan.Replay), a profile (plan.ProfileFile, measured by `cascadeserve
// profile`) and a latency objective into a plan.Plan (Make).
//
//  1. Evaluation. NewEvaluator computes every model's confidence in every
//     replay item once, with plan.Calibrate, plan.Confidence and
//     plan.Answers exactly as the stage workers call them, so a cascade's
//     replayed accuracy, reach per stage and answered-by distribution are
//     those of the live pipeline. Expected cost per item = Σ reach_j ×
//     (per-item cost of model j at the reference batch size CostBatch,
//     default 8, + the profile's per-item messaging overhead + its
//     per-batch messaging overhead / CostBatch). With Config.Calibrate,
//     FitTemperature first fits every model's temperature on the replay.
//  2. Search. Every ordered subset of the ladder (in ladder order) with a
//     threshold grid at every non-last stage is evaluated; the grid sits on
//     quantiles of each model's confidence over the replay, squared so that
//     half of the points escalate less than a quarter of the items (see
//     GridQuantile). A depth-first walk over prefixes with items sorted by
//     confidence makes each cascade cost a binary search and a prefix sum.
//     Dead stages (reached by nothing, or answering nothing) are skipped and
//     the accuracy-versus-cost Pareto front is kept.
//  3. Gears. For each load bucket, from low to high load, the planner walks
//     the fronts of every cascade length (up to the capacity: each stage
//     needs a runner) in the mode's order and takes the first cascade that
//     fits: runners split by demand (reach × cost, highest averages), a max
//     batch and max delay from a grid, every model's utilisation within the
//     headroom (0.8) and a p95 within the SLO simulated by package simulate.
//     Where ingress, nats-server or producers share the runners' cores, the
//     profile's per-request overhead takes a share of the cores that grows
//     with load and slows the runners' compute down
//     (plan.Overheads.RequestOverheadMs, CPULoad); that overhead is measured
//     on the whole live path, so it already holds the CPU the runners spend
//     moving messages, and the cores' budget adds only the models' compute
//     to it.
//     It never moves to a more expensive cascade as load grows. Adjacent
//     buckets with the same gear merge into one plan.Gear whose MaxQPS is
//     their upper edge.
//
// The package is pure Go and deterministic for a given Config.
package planner
