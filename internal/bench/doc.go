// Package bench measures CascadeServe end to end and checks the planner's
// predictions against the live pipeline. It is the logic behind
// `cascadeserve bench`; every number it reports is measured in the same run
// on the same machine, so the ratios between them are meaningful:
//
//   - the broker ceiling (MeasureBroker), measured the way the official
//     tool (`nats bench js pub async`, then `js fetch`) measures it: async
//     publish and durable fetch with explicit acks of 784-byte messages on
//     one file-backed stream, in msg/s — what one stream alone can move;
//     the pipeline's items/s are set against its fetch+ack rate. The
//     item-hop ceiling of earlier versions (MeasureCeiling: publish with
//     Nats-Msg-Id → fetch → ack of MNIST-item-sized messages on a work
//     queue) is measured on request;
//   - in-process ONNX Runtime throughput (ModelThroughput,
//     CascadeThroughput): the same models and cascades with no bus at all —
//     what the compute alone can do;
//   - the whole pipeline with a pinned gear on an all-in-one system:
//     saturated under closed-loop load, then open-loop Poisson at half that
//     load, then one request at a time (idle latency);
//   - the single-model baseline: the plan's most accurate model alone in a
//     gear added to the plan for the run, measured in process and through
//     the pipeline like the other gears, so every gear's requests/s and
//     accuracy can be set against it;
//   - predictions checked against reality (CheckPlan): the accuracy the plan
//     predicts for a gear against the accuracy served on the 10,000 MNIST
//     test images, and the simulator's p95 against the p95 measured under
//     Poisson load at fractions of the gear's capacity.
//
// The numbers are reports, not assertions: the tests check that the
// measurements count correctly, never how fast anything is.
package bench
