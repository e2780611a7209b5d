package onnxrt

import (
	"errors"
	"fmt"
	"unsafe"
)

// pinner page-locks host memory so the GPU can copy it by DMA.
type pinner interface {
	pin(b []byte) error
	unpin(b []byte) error
}

// hostBuffers are a Session's input and output buffers, capItems items
// long. Without a pinner they live on the Go heap; with one they are
// mapped outside it (the GC never sees them) and page-locked, and release
// unlocks and unmaps them.
type hostBuffers struct {
	inF32 []float32
	inU8  []uint8
	out   []float32
	// mapped are the page-locked mappings behind inF32/inU8 and out.
	mapped [][]byte
	pin    pinner
}

// newHostBuffers allocates buffers for items items of itemSize input values
// (uint8 when u8) and classes outputs.
func newHostBuffers(items, itemSize, classes int, u8 bool, pin pinner) (*hostBuffers, error) {
	b := &hostBuffers{pin: pin}
	if pin == nil {
		if u8 {
			b.inU8 = make([]uint8, items*itemSize)
		} else {
			b.inF32 = make([]float32, items*itemSize)
		}
		b.out = make([]float32, items*classes)
		return b, nil
	}
	inBytes := items * itemSize * 4
	if u8 {
		inBytes = items * itemSize
	}
	in, err := b.mapPinned(inBytes)
	if err != nil {
		return nil, err
	}
	out, err := b.mapPinned(items * classes * 4)
	if err != nil {
		_ = b.release()
		return nil, err
	}
	if u8 {
		b.inU8 = in
	} else {
		b.inF32 = unsafe.Slice((*float32)(unsafe.Pointer(&in[0])), items*itemSize)
	}
	b.out = unsafe.Slice((*float32)(unsafe.Pointer(&out[0])), items*classes)
	return b, nil
}

func (b *hostBuffers) mapPinned(n int) ([]byte, error) {
	m, err := mapHost(max(n, 1))
	if err != nil {
		return nil, fmt.Errorf("map %d bytes of host memory: %w", n, err)
	}
	if err := b.pin.pin(m); err != nil {
		_ = unmapHost(m)
		return nil, fmt.Errorf("pin host buffer: %w", err)
	}
	b.mapped = append(b.mapped, m)
	return m, nil
}

// release frees the buffers; the tensors over them must be gone.
func (b *hostBuffers) release() error {
	var errs []error
	for _, m := range b.mapped {
		errs = append(errs, b.pin.unpin(m), unmapHost(m))
	}
	b.mapped, b.inF32, b.inU8, b.out = nil, nil, nil, nil
	return errors.Join(errs...)
}
