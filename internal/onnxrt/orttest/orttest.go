// Package orttest finds and opens the ONNX Runtime library for tests: a
// test that needs it skips where it is not installed
// (scripts/install-onnxruntime.sh), unless CASCADE_REQUIRE_ORT=1 (CI) makes
// that a failure. It takes onnxrt's functions as arguments instead of
// importing onnxrt, so that onnxrt's own tests use it too.
package orttest

import (
	"io"
	"os"
	"testing"
)

// RequireEnv, when "1", turns a missing ONNX Runtime library into a test
// failure instead of a skip.
const RequireEnv = "CASCADE_REQUIRE_ORT"

// Finder finds the library: onnxrt.FindLibrary, whose every error means
// that it is not installed.
type Finder func(getenv func(string) string) (string, error)

// Library returns the library's path as find finds it, skipping the test
// when it is not installed unless CASCADE_REQUIRE_ORT=1.
func Library(tb testing.TB, find Finder) string {
	tb.Helper()
	lib, err := find(os.Getenv)
	if err == nil {
		return lib
	}
	if os.Getenv(RequireEnv) != "1" {
		tb.Skipf("skipping: %v", err)
	}
	tb.Fatalf("find onnxruntime (%s=%q): %v", RequireEnv, os.Getenv(RequireEnv), err)
	return ""
}

// Runtime opens ONNX Runtime with open (onnxrt.NewRuntime) on the library
// find finds (as Library does); it is closed when the test ends.
func Runtime[R io.Closer](tb testing.TB, find Finder, open func(lib string) (R, error)) R {
	tb.Helper()
	rt, err := open(Library(tb, find))
	if err != nil {
		tb.Fatalf("NewRuntime: %v", err)
	}
	tb.Cleanup(func() {
		if err := rt.Close(); err != nil {
			tb.Errorf("Runtime.Close: %v", err)
		}
	})
	return rt
}
