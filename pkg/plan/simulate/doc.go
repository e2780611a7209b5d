// Package simulate is the discrete-event simulator that predicts a
// cascade's latency: the planner runs it for every gear it considers, and
// `cascadeserve simulate` and the plan checks of `bench` run it for the
// gears of a plan file (Gear, PredictP95).
//
// Run models the pipeline the workers run: Poisson arrivals, one stream per
// model, runners scheduled as the stage worker schedules them (shared by
// every model of the gear, or a pool per model: Config.SharedRunners, from
// plan.Plan.RunnerPool; an idle runner woken by an item fills a batch for
// the max delay, a free one takes the model with the most queued items per
// runner share), batch service times from the profile (slowed down by the
// per-request overhead's share of the cores and any idle CPU) plus the
// messaging overheads per item and per batch, a hop overhead per hop,
// a latency floor per request drawn from a log-normal law (the live path's
// client, ingress and JetStream round trips that the rest leaves out, and
// their waits for a core: measured by profile at each load of the overhead
// curve and read at the share of the cores the config keeps busy,
// Config.Busy and plan.Overheads.LatencyFloorAt; a constant one measured
// at low load, plan.Overheads.LatencyFloorMs, for profiles without), and
// escalations drawn from the replay's answered-by distribution. It is pure
// Go and deterministic given its Config.
package simulate
