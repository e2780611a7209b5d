package stageworker

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestLowerThreadPriority checks that the runner's thread, and only it,
// gets the nice value.
func TestLowerThreadPriority(t *testing.T) {
	type result struct {
		tid, nice int
		err       error
	}
	done := make(chan result)
	go func() {
		err := lowerThreadPriority(7)
		tid := syscall.Gettid()
		nice, nerr := threadNice(tid)
		done <- result{tid, nice, errors.Join(err, nerr)}
		// Returning with the thread locked ends the thread.
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.nice != 7 {
		t.Errorf("runner thread's nice %d, want 7", r.nice)
	}
	if r.tid == syscall.Gettid() {
		t.Fatal("the test goroutine ran on the runner's thread")
	}
	mine, err := threadNice(syscall.Gettid())
	if err != nil {
		t.Fatal(err)
	}
	if mine == 7 {
		t.Errorf("another thread got the nice value too")
	}
}

// threadNice reads a thread's nice value from /proc (field 19 of stat).
func threadNice(tid int) (int, error) {
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	return strconv.Atoi(fields[16]) // stat field 19; fields here start at field 3
}
