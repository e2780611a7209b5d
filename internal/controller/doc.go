// Package controller is CascadeServe's control plane. It owns the NATS
// topology of a pipeline (derived from the gear plan and applied
// idempotently), publishes the plan in the pipeline's control bucket, and
// picks the gear: a few times a second it measures the intake rate (from the
// ingress instances' wire.IngressStats) and every model's backlog (from its
// durable consumer), asks the Policy, and on a switch writes the `gear` key
// with compare-and-set. Workers and ingress watch that key.
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
// re-reads, adopts the winner's gear and decides again. Two controllers with
// different plans or settings can disagree, but each switch down restarts the
// dwell time, so they cannot alternate faster than once per MinDwellMs; the
// plan key is written only at start, so the last controller started wins it.
// The same adoption makes a controller restart keep the gear in force and
// lets an operator force a gear with `nats kv put` (the policy then moves
// away from it when load requires).
package controller
