package natstest

import (
	"log/slog"
	"strings"
	"testing"
)

// Logger is the logger tests give a service they run against the server:
// its records at level and above go to t.Log, shown for failed tests and
// with -v.
func Logger(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: level}))
}

// logWriter writes each record to the test log, one t.Log call a record.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
