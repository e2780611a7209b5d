package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// runHealth GETs a service's readiness endpoint and fails unless it answers
// 2xx. Without --url it probes the metrics address of the service in the
// same container (CASCADE_METRICS_ADDR, as the service reads it), so a
// compose health check needs no arguments: the image has no curl.
func runHealth(ctx context.Context, env Env, args []string) error {
	fs := newFlagSet(env, "health", "health [--url http://127.0.0.1:9090/readyz]")
	url := fs.String("url", "", "URL to probe (default: /readyz on CASCADE_METRICS_ADDR, loopback)")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	quiet := fs.Bool("q", false, "print nothing when ready")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if *url == "" {
		u, err := readyzURL(envOr(env, "CASCADE_METRICS_ADDR", ""))
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUsage, err)
		}
		*url = u
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("not healthy: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("not healthy: %s: %s", resp.Status, msg)
	}
	if !*quiet {
		fmt.Fprintln(env.Stdout, msg)
	}
	return nil
}

// readyzURL turns a listen address (":9091", "0.0.0.0:9090", "[::]:9092",
// "10.0.0.5:9090") into the URL of its /readyz, dialling loopback when the
// address listens on every interface.
func readyzURL(addr string) (string, error) {
	if addr == "" {
		return "", fmt.Errorf("no --url and CASCADE_METRICS_ADDR is not set")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("CASCADE_METRICS_ADDR %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/readyz", nil
}
