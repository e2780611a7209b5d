//go:build unix

package onnxrt

import "syscall"

// mapHost returns n bytes of zeroed, page-aligned memory outside the Go
// heap (an anonymous private mapping), for buffers that are page-locked.
func mapHost(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
}

func unmapHost(b []byte) error { return syscall.Munmap(b) }
