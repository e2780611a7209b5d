package servicemain_test

import (
	"bytes"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/controller"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
)

// TestServiceArguments: a service binary answers -h/--help with its
// environment variables and --version with its build on stdout, exit 0,
// without serving; any other argument is a one-line error, exit 2.
func TestServiceArguments(t *testing.T) {
	typ := reflect.TypeFor[controller.Config]()
	tests := []struct {
		args       []string
		done       bool
		code       int
		stdout     []string
		stderrLine string
	}{
		{nil, false, 0, nil, ""},
		{[]string{"-h"}, true, 0, []string{"Usage: controller", "owns the topology", "CASCADE_NATS_URL (default \"nats://127.0.0.1:4222\")", "NATS server to connect to", "CASCADE_METRICS_BEARER_TOKEN\n", "CASCADE_MAX_DELIVER (default \"5\")", "\n  Metrics protects the metrics endpoint", "CASCADE_METRICS_TLS_KEY\n      TLSCert and TLSKey are PEM files"}, ""},
		{[]string{"--help"}, true, 0, []string{"CASCADE_PLAN\n      Plan is the path of the gear plan file."}, ""},
		{[]string{"-help"}, true, 0, []string{"CASCADE_UPSHIFT_BACKLOG"}, ""},
		{[]string{"--version"}, true, 0, []string{"controller ", runtime.Version()}, ""},
		{[]string{"-version"}, true, 0, []string{runtime.Version()}, ""},
		{[]string{"--frobnicate"}, true, 2, nil, "controller: flag provided but not defined: -frobnicate (see controller --help)"},
		{[]string{"serve"}, true, 2, nil, `controller: unexpected argument "serve"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			done, code := servicemain.HandleArgs("controller", "The controller owns the topology.", typ, tt.args, &stdout, &stderr)
			if done != tt.done || code != tt.code {
				t.Fatalf("done %v code %d, want %v %d (stderr %q)", done, code, tt.done, tt.code, stderr.String())
			}
			for _, want := range tt.stdout {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
				}
			}
			if tt.stderrLine == "" && stderr.Len() > 0 {
				t.Errorf("stderr: %q", stderr.String())
			}
			if tt.stderrLine != "" {
				if !strings.HasPrefix(stderr.String(), tt.stderrLine) || strings.Count(stderr.String(), "\n") != 1 || stdout.Len() > 0 {
					t.Errorf("stderr %q, stdout %q; want one line starting %q and nothing on stdout", stderr.String(), stdout.String(), tt.stderrLine)
				}
			}
			if tt.args == nil && stdout.Len()+stderr.Len() > 0 {
				t.Errorf("no arguments printed %q %q", stdout.String(), stderr.String())
			}
		})
	}
}
