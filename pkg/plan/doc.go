// Package plan holds CascadeServe's gear plan: the types of the plan file the
// controller serves, loading and validation with clear errors, replay data
// (every model's probabilities on a labeled validation set), exact cascade
// evaluation over that replay, the accuracy-versus-cost Pareto search, gear
// construction and the discrete-event simulator that predicts p95 latency.
//
// The package is pure Go: it imports no NATS client, no ONNX Runtime and no
// cgo, so the planner runs anywhere and its tests are fast and deterministic.
//
// # Offline phase
//
// MakePlan turns a replay (Replay), a profile (ProfileFile, measured by
// `cascadeserve profile`) and a latency objective into a Plan:
//
//  1. Evaluation. NewEvaluator computes every model's confidence in every
//     replay item once, with Calibrate, Confidence and Answers exactly as
//     the stage workers call them, so a cascade's replayed accuracy, reach
//     per stage and answered-by distribution are those of the live pipeline.
//     Expected cost per item = Σ reach_j × (per-item cost of model j at the
//     reference batch size CostBatch, default 8, + the profile's per-item
//     messaging overhead + its per-batch messaging overhead / CostBatch).
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
//     headroom (0.8) and a simulated p95 within the SLO (Simulate). Where
//     ingress, nats-server or producers share the runners' cores, the
//     profile's per-request overhead takes a share of the cores that grows
//     with load and slows the runners down (SimConfig.RequestOverheadMs). It never
//     moves to a more expensive cascade as load grows. Adjacent buckets with
//     the same gear merge into one Gear whose MaxQPS is their upper edge.
//
// Simulate models the pipeline the workers run: Poisson arrivals, one
// stream per model, runners scheduled as the stage worker schedules them
// (shared by every model of the gear, or a pool per model: Plan.RunnerPool;
// an idle runner woken by an item fills a batch for the max delay, a free
// one takes the model with the most queued items per runner share), batch
// service times from the profile plus the messaging overheads per item
// and per batch (slowed down by the per-request overhead's share of the
// cores and any idle CPU), a hop overhead per hop, a latency floor per
// request drawn from a log-normal law (the live path's client, ingress and
// JetStream round trips that the rest leaves out, measured by profile at
// low load; SimConfig.LatencyFloorMs), and escalations drawn from the
// replay. Plan.SimulateGear and Plan.PredictP95
// run it for a gear of a plan file.
package plan
