package stageworker

import (
	"runtime"
	"syscall"
)

// lowerThreadPriority locks the calling goroutine to its OS thread and
// raises that thread's nice value to nice (Linux applies setpriority to
// one thread when given its id). The goroutine must not unlock the thread:
// when it returns the thread ends with it, and no other goroutine ever runs
// at the lowered priority.
func lowerThreadPriority(nice int) error {
	runtime.LockOSThread()
	return syscall.Setpriority(syscall.PRIO_PROCESS, syscall.Gettid(), nice)
}
