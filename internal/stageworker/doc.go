// Package stageworker is CascadeServe's stage worker: it hosts one or more
// models of a pipeline's ladder, pulls batches of items from their work
// queues, runs them with ONNX Runtime, and answers each item or escalates
// it to the next model of the current gear.
//
// # Start
//
// Run waits for the controller's control bucket, reads the plan from its
// `plan` key, waits for the topology, and loads every hosted model
// (Config.Models, default every model some gear uses) once per runner:
// Config.Runners goroutines, each with its own session of every hosted
// model (a session is not safe for concurrent use). A gear switch never
// loads anything.
//
// # Plan and gear
//
// A watcher follows the KV keys `plan` and `gear` and swaps in an immutable
// snapshot; runners read the current one at every decision, so items in
// flight follow the gear current at each decision. Until the `gear` key
// exists the plan's first gear applies. An invalid plan or gear value is
// logged and ignored. The apply latency (now − GearState.AtUnixNano) is the
// histogram cascade_worker_gear_apply_seconds.
//
// # Runners and shares
//
// Every runner can serve every hosted model. Before each batch it chooses a
// model:
//
//  1. a model whose backlog estimate is stale (no runner of this worker
//     pulled from it for IdleWait) is probed first with a pull that does not
//     wait, so no queue goes unobserved even when all runners are busy;
//  2. then a model outside the current gear with items queued or in hand,
//     to drain it: nothing new is routed to it, so its items are the oldest
//     and bounded, and under overload the gear's own backlog would keep
//     them waiting past their deadlines;
//  3. otherwise the model with the largest backlog per runner share, where
//     the backlog is the NumPending of the last message pulled from it plus
//     items in hand, and the share is the model's Runners share in the
//     current gear (a cascade model without one: an equal split);
//  4. with nothing to do, the runner opens an idle watch, a pull of one item
//     lasting IdleWait, on every hosted model at once, and wakes on the
//     first item that arrives anywhere.
//
// Shares are thus weights, not fixed assignments: runners go where the work
// is, and models outside the current gear are still drained, so no item is
// stranded.
//
// # Batching
//
// A batch is formed with pkg/batching from the current gear: at most the
// model's max batch (stage override or gear), waiting at most the gear's max
// delay from the first item in hand, no waiting when the backlog fills the
// batch, and never past the earliest deadline in hand minus the expected
// compute (profile latency at the max batch plus the plan's hop overhead).
// Every pull is a Fetch sized by that decision (never Consume with a large
// prefetch: ack timers start at delivery). A model outside the current gear
// is only drained, so its batches do not wait.
//
// # Per item
//
//   - Undecodable message: it has no readable id or reply subject, so no
//     result can be sent. It is copied to the dead-letter subject, logged,
//     counted (outcome failed) and terminated.
//   - Invalid item (no id, another pipeline, an input that does not fit the
//     models): an `invalid_input` error result, then Term.
//   - Deadline passed: a `deadline_exceeded` result without compute.
//   - Otherwise the item is computed in one batched inference. Its
//     probabilities are calibrated with the model's temperature
//     (plan.Calibrate) and its confidence taken with the plan's metric
//     (plan.Confidence), exactly as the planner's replay does.
//
// # Cascade decision
//
// If the model is in the current gear, it answers when plan.Answers says so
// with its threshold there (the last stage always answers); otherwise the
// item escalates to its next stage in the gear.
//
// If the model is not in the current gear (the gear changed while the item
// was queued for it), the item is still computed by this model. It answers
// if its confidence reaches the threshold this model had in the gear that
// sent the item here (the gear of its previous visit, or its admission gear
// at the first stage; the model answers if it was last there, or if no such
// gear holds it any more). Otherwise it escalates to the first model of the
// current gear that comes after this one in ladder order; if there is none,
// this model is the most accurate left and answers. Items therefore only
// move forward along the ladder and never visit a model twice.
//
// Deadline-aware escalation: an item that cannot finish at the next model
// before its deadline (now + the next model's profile latency at this batch
// size + the plan's hop overhead > deadline) is answered now with this
// model's prediction, marked Degraded. If the next stage's queue is full
// (the publish is rejected: DiscardNew), the item is answered degraded too,
// never lost or blocked. Both are counted in cascade_worker_degraded_total.
//
// # Delivery
//
// Escalations are published to the next model's subject with Nats-Msg-Id
// `<id>.<model>`; results of durable items to the results stream with
// `<id>.result`; all JetStream publishes of a batch go out asynchronously
// and the worker waits for every PubAck of the batch. Then results are sent
// to Item.ReplyTo (core NATS) and only then are the inputs acked.
//
// A result, wherever it goes and whatever it is (answer, degraded answer,
// error, or the `internal` error of a dead-lettered item), is encoded in
// the item's ResultFormat (wire.Codec.EncodeResultAs): a msgpack
// wire.Result with header Content-Type: application/msgpack, or, for items
// of jobs the producer sent as JSON, the OIP v2 JSON response body
// (wire.EncodeOIPResponse; an error as {"id", "error", "code"}) with
// Content-Type: application/json, so a human reading the results stream
// reads JSON. An error result also carries the header Cascade-Error: <code>.
//
// The handler of a message yields an error (nil, permanent or transient);
// one function, natsbus.DecideAck (shared with the ingress's jobs door),
// maps it to the acknowledgement: nil → Ack; permanent → Term; transient (a failed publish, an inference error) →
// NakWithDelay, except on the last allowed delivery (NumDelivered ≥ the
// consumer's MaxDeliver), where the item is published to the dead-letter
// subject with an `internal` error result and then terminated. A batch whose
// inference fails is rerun item by item, so one bad item cannot take its
// neighbours to the dead-letter subject.
//
// While a batch is in hand, the worker tells the server every half AckWait
// that its messages are in progress, so a slow batch is not redelivered
// while it is worked on and AckWait can stay short (2 s by default): it is
// how long a dead worker's batch waits for another.
//
// A worker that dies after publishing but before acking leaves its inputs to
// be redelivered after the consumer's AckWait; the next worker republishes
// with the same message ids, which JetStream deduplicates within the
// streams' duplicate window, so the results stream holds exactly one result
// per request. A reply inbox (core NATS) may then see the result twice;
// callers keep the first per id.
//
// # Heartbeat
//
// Once its models are loaded, a worker announces itself every
// HeartbeatInterval on wire.WorkerStatsSubject (wire.WorkerHeartbeat: its
// instance name, models, runners, provider, gear, and cumulative counters
// of the results it produced, with a fixed-bucket latency histogram). The
// controller derives the live capacity from these and its dashboard the
// served load, latency and answering-model mix.
//
// # Shutdown
//
// When ctx ends, runners stop pulling, finish the batch in hand (and any
// item an idle watch still delivers, within IdleWait), publish, ack, and
// return; the heartbeat sends a last beat in state leaving, so the
// controller drops the worker's runners at once. Run then closes the
// sessions and returns nil.
//
// # Files
//
//   - worker.go: Run, the hosted models and their loading.
//   - runner.go: a runner: choosing a model, pulling a batch, running it
//     (process, infer).
//   - route.go: the cascade decision of a computed item, its stage in the
//     gear resolved once per batch (stageRoute).
//   - process.go: a batch's messages (task): checks, escalation envelopes,
//     results, publishing.
//   - settle.go: acknowledging a message (natsbus.DecideAck) and dead
//     letters.
//   - control.go: the plan and gear in force, and the batching policy and
//     runner share they give a model.
//   - heartbeat.go, metrics.go, config.go: the heartbeat, the metrics, the
//     configuration.
package stageworker
