// Package hygiene holds repository-wide checks that run as tests: every
// package has a doc comment, the pure packages stay pure, and only the
// stage worker links the cgo ONNX Runtime runner.
package hygiene
