//go:build !linux

package stageworker

import (
	"errors"
	"runtime"
)

// lowerThreadPriority is Linux only: elsewhere setpriority does not reach a
// single thread. It still locks the goroutine to its thread, as on Linux.
func lowerThreadPriority(int) error {
	runtime.LockOSThread()
	return errors.New("a thread's own nice value is set on Linux only")
}
