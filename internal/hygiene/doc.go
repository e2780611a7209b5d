// Package hygiene holds repository-wide checks that run as tests: every
// package has a doc comment, the pure packages stay pure, only the stage
// worker links the cgo ONNX Runtime runner, and the service binaries link
// neither nats-server nor the MNIST models.
package hygiene
