// Package bench measures CascadeServe end to end and checks the planner's
// predictions against the live pipeline. It is the logic behind
// `cascadeserve bench`; every number it reports is measured in the same run
// on the same machine, so the ratios between them are meaningful:
//
//   - the raw JetStream ceiling (MeasureCeiling): publish → fetch → ack
//     item-hops per second on a work queue configured like a model's, with
//     payloads of the pipeline's size — what the bus alone can move;
//   - in-process ONNX Runtime throughput (ModelThroughput,
//     CascadeThroughput): the same models and cascades with no bus at all —
//     what the compute alone can do;
//   - the whole pipeline saturated (Saturate): an all-in-one system with a
//     pinned gear under closed-loop load;
//   - predictions checked against reality (CheckPlan): the accuracy the plan
//     predicts for a gear against the accuracy served on the 10,000 MNIST
//     test images, and the simulator's p95 against the p95 measured under
//     Poisson load at fractions of the gear's capacity.
//
// The numbers are reports, not assertions: the tests check that the
// measurements count correctly, never how fast anything is.
package bench
