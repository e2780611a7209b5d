package telemetry

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// HTTPSecurity is the optional protection of an HTTP endpoint (the
// ingress's inference door, a service's metrics): TLS from a certificate
// and key file, and a bearer token every request must present. Each is off
// when empty. Embedded in a service's Config with an env prefix
// (CASCADE_HTTP_ or CASCADE_METRICS_): <prefix>TLS_CERT, <prefix>TLS_KEY,
// <prefix>BEARER_TOKEN.
type HTTPSecurity struct {
	// TLSCert and TLSKey are PEM files; set both to serve HTTPS.
	TLSCert string `env:"TLS_CERT"`
	TLSKey  string `env:"TLS_KEY"`
	// BearerToken, if set, is required as "Authorization: Bearer <token>"
	// on every path but the liveness and readiness probes, which reveal
	// nothing but "up" or "ready".
	BearerToken string `env:"BEARER_TOKEN"`
}

// ErrUnauthorized is the answer to a request without the bearer token.
var ErrUnauthorized = errors.New("missing or wrong bearer token")

// Validate reports what is wrong with the settings; name prefixes the
// variable names in the messages (e.g. "CASCADE_HTTP_").
func (s HTTPSecurity) Validate(name string) error {
	var errs []error
	if (s.TLSCert == "") != (s.TLSKey == "") {
		errs = append(errs, fmt.Errorf("%sTLS_CERT and %sTLS_KEY must be set together", name, name))
	}
	if s.TLSCert != "" && s.TLSKey != "" {
		if _, err := tls.LoadX509KeyPair(s.TLSCert, s.TLSKey); err != nil {
			errs = append(errs, fmt.Errorf("%sTLS_CERT/%sTLS_KEY: %w", name, name, err))
		}
	}
	if s.BearerToken != "" && (len(s.BearerToken) < 16 || strings.ContainsAny(s.BearerToken, " \t\r\n")) {
		errs = append(errs, fmt.Errorf("%sBEARER_TOKEN must be at least 16 characters without white space", name))
	}
	return errors.Join(errs...)
}

// TLS reports whether the endpoint serves HTTPS.
func (s HTTPSecurity) TLS() bool { return s.TLSCert != "" }

// probePaths answer without the bearer token.
var probePaths = map[string]bool{"/healthz": true, "/readyz": true, "/v2/health/live": true, "/v2/health/ready": true}

// Wrap requires the bearer token on h's requests when one is set.
func (s HTTPSecurity) Wrap(h http.Handler) http.Handler {
	if s.BearerToken == "" {
		return h
	}
	want := []byte("Bearer " + s.BearerToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if !probePaths[r.URL.Path] && subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="cascadeserve"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, "{\"error\":%q,\"code\":\"unauthorized\"}\n", ErrUnauthorized.Error())
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Serve serves srv on ln, over TLS when configured.
func (s HTTPSecurity) Serve(srv *http.Server, ln net.Listener) error {
	if s.TLS() {
		return srv.ServeTLS(ln, s.TLSCert, s.TLSKey)
	}
	return srv.Serve(ln)
}
