// Package ingress is CascadeServe's front door. It takes requests through
// three doors, validates them against the pipeline's input, stamps an id and
// a deadline, and publishes the canonical FP32 item to the first model of
// the gear in force, awaiting the PubAck. Every accepted request ends with
// exactly one result (made by the stage workers); every refused one gets a
// typed error at once (wire.Code), and nothing else is disturbed.
//
// # Doors
//
//   - NATS request-reply on wire.InferSubject (core NATS, queue group
//     wire.IngressQueue). The body is msgpack (wire.Request), or the Open
//     Inference Protocol v2 JSON body when the header Content-Type is
//     application/json (or the header Inference-Header-Content-Length
//     announces binary tensor data):
//     nats req cascade.mnist.infer '<json>' -H Content-Type:application/json
//     The result of a msgpack request of one item without an
//     Idempotency-Key (a msgpack wire.Result) goes from the last stage
//     straight to the caller's reply inbox. Every other request (JSON, a
//     batch, a key) is answered by the ingress itself, in the request's
//     encoding: the OIP JSON response for JSON, so JSON callers read JSON;
//     one msgpack wire.Result (Items in input order for a batch) for
//     msgpack. Errors come back at once in the request's encoding, with
//     the header Cascade-Error: <code>. A message without a reply subject
//     is dropped (counted as invalid_input): there is nobody to answer.
//   - Durable jobs on the jobs stream (wire.JobsStream, subjects
//     wire.JobsSubject(p, client), shared durable consumer
//     wire.JobsConsumer). The producer's PubAck means accepted: the job gets
//     exactly one result on wire.ResultSubject(p, client) (msg id
//     `<id>.result`), even if no ingress runs when it is published. The
//     client is the subject's last token (a client in the body is
//     ignored). The result is in the job's encoding: a msgpack
//     wire.Result, or, for a job sent as JSON, the OIP v2 JSON response
//     body (an error as {"id", "error", "code"}), so a human reading the
//     results stream with the nats CLI reads JSON; the header
//     Content-Type (application/msgpack or application/json) says which,
//     and an error result carries Cascade-Error: <code>. The ingress
//     records the encoding in the item (wire.Item.ResultFormat) for the
//     stage worker that answers. Invalid jobs get an error result;
//     a full first queue defers the job with NakWithDelay (it stays in the
//     jobs stream, durable, and is retried with a doubling delay; on the
//     consumer's last allowed delivery the `overloaded` error becomes its
//     result). See handleJob for every case. A job without an id gets one
//     derived from its stream sequence, so a redelivery keeps it.
//   - HTTP, Open Inference Protocol v2: POST /v2/models/{pipeline}/infer
//     (FP32 or UINT8 tensors, JSON or with the binary tensor data
//     extension), GET /v2, /v2/health/live, /v2/health/ready,
//     /v2/models/{pipeline} (metadata with a batch axis of -1, the ladder
//     and the gear in force) and /v2/models/{pipeline}/ready
//     ({"name","ready"}). Errors, unknown routes and methods included, are
//     {"error": "...", "code": "..."} with HTTPStatus(code): 400
//     invalid_input (413 for a body over MaxBodyBytes, 404 for another
//     pipeline or route, 405 for a method), 409 duplicate, 429 overloaded,
//     504 deadline_exceeded, 503 unavailable, 500 internal.
//
// HTTP and JSON NATS callers are answered through one wildcard
// subscription on `_INBOX.<instance>.>`: each item gets a fresh subject
// under it and a channel in a map, never a subscription of its own.
//
// # Batches and outputs
//
// An input of shape [N, item shape...] with N > 1 (at most MaxBatchItems)
// is N items, each cascaded on its own (serve, serveBatch); the answer
// holds the N results in input order, a refused row with its own error.
// In OIP JSON: label INT64 [N] (-1 for a failed row), confidence FP64 [N],
// probabilities FP32 [N, classes], the rows' errors in
// parameters.errors. The OIP request's "outputs" (msgpack: Request.Outputs)
// select the outputs and their order; probabilities implies
// return_probabilities; an unknown name is invalid_input.
//
// # Ids and idempotency
//
// An id is a correlation id, echoed in the result: a request without one
// gets a NUID, and the same id twice is two requests with two answers.
// Every admission gets its own key (wire.Item.Key), from which the message
// ids of its stages derive. Idempotency is opt-in, with the header
// Idempotency-Key (HTTP and request-reply; see idempotency.go): the first
// request of a client with a key is admitted and its result kept in the
// bucket wire.IdempotencyBucket for the controller's window; a repeat is
// answered with that result (header Idempotent-Replayed: true), waiting
// for it while the first is in flight, and with `duplicate` (409) only
// when it cannot be had by the repeat's deadline. Jobs use JetStream's
// Nats-Msg-Id instead; a job without an id gets one derived from its
// stream sequence, and a redelivered job keeps its key, so it is
// deduplicated at the first stage.
//
// # Deadlines
//
// deadline_unix_ms wins over timeout_ms, which wins over DefaultTimeout;
// every deadline is capped at admission + MaxTimeout. A deadline already
// past is answered deadline_exceeded. Callers the ingress answers itself
// wait until the deadline plus ReplyGrace.
//
// # Readiness, plan and gear
//
// The ingress waits for the controller's control bucket, the `plan` key and
// the topology of every model the plan uses; until then /v2/health/ready
// answers 503 and the NATS doors are closed (request-reply callers see "no
// responders"; jobs wait in their stream). It watches the `plan` and `gear`
// keys; each request is admitted with one snapshot of both. Before any
// `gear` key, and for a gear id the plan does not know, it admits to the
// plan's first (most accurate) gear.
//
// # Stats and metrics
//
// Every StatsInterval (100 ms) the cumulative admitted and rejected counters
// are published as wire.IngressStats on wire.StatsSubject(p, instance); the
// controller derives the intake rate from them. Prometheus metrics (per
// instance): cascade_ingress_requests_total{door,outcome},
// cascade_ingress_admission_duration_seconds{door},
// cascade_ingress_request_duration_seconds{door},
// cascade_ingress_http_in_flight_requests, cascade_ingress_ready,
// cascade_ingress_gear_index.
//
// # Shutdown
//
// When ctx ends: ready turns false; then, at once and concurrently, the
// request subscription is drained (requests already delivered are still
// handled), the jobs loop finishes the batch in hand and stops pulling, and
// the HTTP server stops accepting and waits for the requests in flight. All
// of this is bounded by ShutdownTimeout; callers still waiting then are
// answered unavailable. Last, the reply inbox is unsubscribed.
package ingress
