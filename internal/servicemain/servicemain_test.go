package servicemain

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/natsembed"
)

type fakeConfig struct {
	Process
	metricsAddr string
}

func (c fakeConfig) MetricsAddress() string { return c.metricsAddr }

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServiceWaitsForNATS starts a service before its NATS server exists:
// it keeps waiting (its probe answers not ready) instead of exiting, runs
// once the server is started on that port, and is then ready.
func TestServiceWaitsForNATS(t *testing.T) {
	natsPort, metricsPort := natstest.FreePort(t), natstest.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", metricsPort)
	cfg := fakeConfig{Process{
		NATSURL:  fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
		LogLevel: "warn",
	}, fmt.Sprintf("127.0.0.1:%d", metricsPort)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ran := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, "fake", nil, io.Discard, func(map[string]string) (fakeConfig, error) { return cfg, nil },
			func(ctx context.Context, _ fakeConfig, d Deps) error {
				if !d.Conn.IsConnected() {
					return fmt.Errorf("run got a connection in state %v", d.Conn.Status())
				}
				ready := prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_fake_ready", Help: "test"})
				d.Registerer.MustRegister(ready)
				ready.Set(1)
				// A route of the service's own (the controller's dashboard)
				// on the metrics listener.
				d.HTTP.HandleFunc("GET /extra", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("extra")) })
				close(ran)
				<-ctx.Done()
				return nil
			})
	}()

	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case err := <-done:
				t.Fatalf("service exited while waiting for %s: %v", what, err)
			case <-ctx.Done():
				t.Fatalf("no %s within the test's time", what)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	waitUntil("metrics endpoint", func() bool { code, _ := get(base + "/healthz"); return code == http.StatusOK })
	time.Sleep(600 * time.Millisecond) // a few failed connects
	if code, body := get(base + "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "NATS") {
		t.Errorf("/readyz before NATS = %d %q, want 503 naming NATS", code, body)
	}
	if _, body := get(base + "/metrics"); !strings.Contains(body, "cascade_nats_connected 0") {
		t.Error("cascade_nats_connected is not 0 before NATS is up")
	}

	srv, err := natsembed.StartServer(natsembed.ServerConfig{Port: natsPort, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	select {
	case <-ran:
	case err := <-done:
		t.Fatalf("service exited: %v", err)
	case <-ctx.Done():
		t.Fatal("service did not run after NATS started")
	}
	waitUntil("readiness", func() bool { code, _ := get(base + "/readyz"); return code == http.StatusOK })
	if _, body := get(base + "/metrics"); !strings.Contains(body, "cascade_nats_connected 1") {
		t.Error("cascade_nats_connected is not 1 once connected")
	}
	if code, body := get(base + "/extra"); code != http.StatusOK || body != "extra" {
		t.Errorf("a route the service added: %d %q", code, body)
	}
	cancel()
	natstest.Returned(t, "serve after cancel", 10*time.Second, done)
}

// TestProcessValidate: the settings every service shares are checked in one
// place, every problem reported together and named by its variable.
func TestProcessValidate(t *testing.T) {
	ok := Process{NATSURL: "nats://127.0.0.1:4222", Pipeline: "mnist", LogLevel: "warn", LogFormat: "json"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid settings: %v", err)
	}
	bad := Process{Pipeline: "a.b", LogLevel: "loud", LogFormat: "xml"}
	bad.Metrics.TLSCert = "cert.pem" // without a key
	err := bad.Validate()
	for _, want := range []string{"CASCADE_NATS_URL", "CASCADE_PIPELINE", "CASCADE_LOG_LEVEL", "CASCADE_LOG_FORMAT", "CASCADE_METRICS_TLS"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}
