package natstest

import (
	"testing"
	"time"
)

// pollEvery is how often WaitFor checks its condition.
const pollEvery = 10 * time.Millisecond

// WaitFor polls cond until it holds, and fails t if it does not within
// timeout, naming what it waited for: polling with a deadline instead of
// sleeping, for tests that watch a system converge.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	WaitForState(t, what, timeout, func() (bool, string) { return cond(), "" })
}

// WaitForState is WaitFor for a condition that also describes what it
// saw; the failure message carries the last description.
func WaitForState(t testing.TB, what string, timeout time.Duration, cond func() (done bool, state string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if state != "" {
				t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, state)
			}
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pollEvery)
	}
}

// Returned waits up to within for what a goroutine returned on done, and
// fails t if it is an error or does not come: for a service's Run or
// Serve after its context is cancelled.
func Returned(t testing.TB, what string, within time.Duration, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s returned %v, want nil", what, err)
		}
	case <-time.After(within):
		t.Errorf("%s did not return within %v", what, within)
	}
}
