// Package plan holds CascadeServe's gear plan: the types of the plan file the
// controller serves, loading and validation with clear errors, replay data
// (every model's probabilities on a labeled validation set), exact cascade
// evaluation over that replay, the accuracy-versus-cost Pareto search, gear
// construction and the discrete-event simulator that predicts p95 latency.
//
// The package is pure Go: it imports no NATS client, no ONNX Runtime and no
// cgo, so the planner runs anywhere and its tests are fast and deterministic.
package plan
