//go:build !unix

package onnxrt

// mapHost falls back to the Go heap, which does not move large objects.
func mapHost(n int) ([]byte, error) { return make([]byte, n), nil }

func unmapHost([]byte) error { return nil }
