// Package controller is CascadeServe's control plane. It owns the NATS
// topology of a pipeline (derived from the gear plan and applied
// idempotently), publishes the plan in the pipeline's control bucket, and
// picks the gear: a few times a second it measures the intake rate and every
// model's backlog, asks the Policy, and on a switch writes the `gear` key
// with compare-and-set. Workers and ingress watch that key.
//
// # Start
//
// Run takes the plan from its caller (Deps.Plan: the binary reads the file
// CASCADE_PLAN with LoadPlan, `cascadeserve up` hands over the plan it
// serves, the built-in MNIST plan by default), applies the
// topology with natsbus.EnsureTopology, puts the plan JSON under the `plan`
// key unless the key already holds the same bytes, and reads the `gear` key:
// a gear left by an earlier controller is adopted (a restart keeps the gear
// in force); otherwise the most accurate gear (or the pinned one) is written
// at once, so workers need not wait for the first tick.
//
// # Measuring
//
// Every hysteresis.sample_interval_ms of the plan (200-500 ms: 2-5 Hz; never
// per request) the decision loop:
//
//   - reads the intake rate from a RateMeter fed by the ingress instances'
//     wire.IngressStats messages (cumulative admitted counters, subscribed on
//     wire.StatsWildcard), averaged over hysteresis.rate_window_ms and summed
//     over instances, robust to instance restarts and clock skew;
//   - reads NumPending and NumAckPending of every used model's durable
//     consumer (one ConsumerInfo call per model);
//   - reads the live capacity from a Fleet fed by the stage workers'
//     heartbeats (wire.WorkerHeartbeat on wire.WorkerStatsWildcard): the
//     runners of the workers that have neither left nor missed three beats.
//     The Policy scales every gear's max_qps by live runners / the plan's
//     capacity (see Policy);
//   - re-reads the `gear` key, decides with the Policy and writes on a
//     switch. GearState.AtUnixNano is taken right before the write, so the
//     workers' apply latency (now − AtUnixNano) covers the whole broadcast.
//
// After each tick, when Deps.HTTP is set, the state of the tick goes to the
// live dashboard (package dashboard): gear and reason, offered and served
// load, latency, answering-model mix, backlog, capacity and workers.
//
// NATS errors after the start are logged once per distinct error, counted in
// cascade_controller_errors_total{op}, and the loop carries on; a stream,
// consumer or bucket found missing (memory storage after a server restart)
// makes the next tick apply the topology and the plan again.
//
// # Pinned gear
//
// With CASCADE_GEAR set the policy always answers that gear: the controller
// writes it at start and never switches away. If someone else writes another
// gear, the controller writes the pinned one back at its next tick.
//
// # One active controller
//
// One controller per pipeline is expected. A second one is safe but
// redundant: both apply the same topology (a no-op for the second), both
// measure the same inputs and so mostly reach the same decisions. Every tick
// a controller re-reads the `gear` key and adopts any value it did not write
// itself as the current gear (its dwell time counting from that value's
// AtUnixNano); its own writes are compare-and-set on the revision it read, so
// a controller never overwrites a switch it has not seen. The loser of a race
// re-reads, adopts the winner's gear and decides again (at most three tries
// per tick). Two controllers with different plans or settings can disagree;
// since every switch restarts the dwell time and only moves up are
// immediate, they cannot alternate faster than once per MinDwellMs. The plan
// key is written only at start, so the last controller started wins it. The
// same adoption lets an operator force a gear with `nats kv put`: the policy
// takes it as the current gear and moves away from it as the load requires.
package controller
