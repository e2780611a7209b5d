//go:build !(linux && cgo)

package onnxrt

import "fmt"

func newCUDAPinner() (pinner, error) {
	return nil, fmt.Errorf("pin host buffers: supported on linux with cgo only: %w", ErrProviderUnavailable)
}
