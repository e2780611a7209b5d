package cli

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthProbesReadiness(t *testing.T) {
	ready := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if !ready {
			http.Error(w, "not ready: waiting for NATS", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	run := func(environ map[string]string, args ...string) (string, error) {
		var out bytes.Buffer
		env := Env{Stdout: &out, Stderr: &out, Getenv: func(k string) string { return environ[k] }}
		err := Run(context.Background(), env, append([]string{"health"}, args...))
		return out.String(), err
	}

	if _, err := run(nil, "--url", srv.URL+"/readyz"); err == nil || !strings.Contains(err.Error(), "waiting for NATS") {
		t.Errorf("not ready: err = %v, want the reason", err)
	}
	ready = true
	if out, err := run(nil, "--url", srv.URL+"/readyz"); err != nil || !strings.Contains(out, "ready") {
		t.Errorf("ready: %q, %v", out, err)
	}
	// Without --url: the service's own CASCADE_METRICS_ADDR.
	if _, err := run(map[string]string{"CASCADE_METRICS_ADDR": addr}); err != nil {
		t.Errorf("from CASCADE_METRICS_ADDR %s: %v", addr, err)
	}
	if _, err := run(nil); !errors.Is(err, ErrUsage) {
		t.Errorf("no address: err = %v, want a usage error", err)
	}
	if _, err := run(nil, "--url", "http://127.0.0.1:1/readyz"); err == nil {
		t.Error("a closed port is healthy")
	}
}

func TestReadyzURL(t *testing.T) {
	for in, want := range map[string]string{
		":9091":          "http://127.0.0.1:9091/readyz",
		"0.0.0.0:9090":   "http://127.0.0.1:9090/readyz",
		"[::]:9092":      "http://127.0.0.1:9092/readyz",
		"10.0.0.5:9090":  "http://10.0.0.5:9090/readyz",
		"localhost:9090": "http://localhost:9090/readyz",
	} {
		if got, err := readyzURL(in); err != nil || got != want {
			t.Errorf("readyzURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
