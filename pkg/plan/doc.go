// Package plan holds CascadeServe's gear plan: the types of the plan file the
// controller serves, loading and validation with clear errors, the two files
// a plan is made from — the replay (every model's probabilities on a labeled
// validation set, Replay) and the profile (every model's latency per batch
// size and the live path's overheads, ProfileFile) — and the confidence rule
// (Calibrate, Confidence, Answers) that the stage workers and the planner's
// replay both apply, so that they decide identically.
//
// The package is pure Go: it imports no NATS client, no ONNX Runtime and no
// cgo. Names of pipelines, models and gears follow wire.ValidName.
//
// What works on plans lives in sub-packages, each importing this one and
// never the reverse:
//
//   - planner makes a plan from a replay and a profile (planner.Make): exact
//     cascade evaluation over the replay, the accuracy-versus-cost Pareto
//     search, temperature calibration and the gear search.
//   - simulate is the discrete-event simulator that predicts a gear's p95
//     latency (simulate.Run, simulate.Gear for a gear of a plan).
//   - planplot draws a plan's Pareto front and gears (for `plan show`).
//   - plantest builds synthetic ladders, replays, profiles and plans for
//     tests.
package plan
