package telemetry_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/telemetry"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, PEM, into dir.
func selfSigned(t *testing.T, dir string) (cert, key string, pool *x509.CertPool) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cascadeserve test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return cert, key, pool
}

// TestHTTPSecurityTokenAndTLS: with a bearer token, every path but the
// probes answers 401 without it; with a certificate, the endpoint speaks
// only HTTPS.
func TestHTTPSecurityTokenAndTLS(t *testing.T) {
	cert, key, pool := selfSigned(t, t.TempDir())
	sec := telemetry.HTTPSecurity{TLSCert: cert, TLSKey: key, BearerToken: "0123456789abcdef-token"}
	if err := sec.Validate("CASCADE_METRICS_"); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: sec.Wrap(telemetry.Handler(telemetry.NewRegistry())), ReadHeaderTimeout: time.Second}
	go func() { _ = sec.Serve(srv, ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	base := "https://" + ln.Addr().String()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(url, token string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "wrong-token-wrong-token", http.StatusUnauthorized},
		{"/metrics", sec.BearerToken, http.StatusOK},
		{"/healthz", "", http.StatusOK},
	} {
		if got := get(base+c.path, c.token); got != c.want {
			t.Errorf("GET %s with token %q = %d, want %d", c.path, c.token, got, c.want)
		}
	}
	// Plain HTTP is not served.
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + ln.Addr().String() + "/healthz")
	if err == nil {
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered 200 on a TLS endpoint")
		}
		resp.Body.Close()
	}
}

func TestHTTPSecurityValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		sec  telemetry.HTTPSecurity
		want string
	}{
		{"cert without key", telemetry.HTTPSecurity{TLSCert: "c.pem"}, "must be set together"},
		{"missing files", telemetry.HTTPSecurity{TLSCert: "/nonexistent/c.pem", TLSKey: "/nonexistent/k.pem"}, "no such file"},
		{"short token", telemetry.HTTPSecurity{BearerToken: "short"}, "at least 16"},
	} {
		err := c.sec.Validate("CASCADE_HTTP_")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
	if err := (telemetry.HTTPSecurity{}).Validate("CASCADE_HTTP_"); err != nil {
		t.Errorf("empty settings: %v", err)
	}
}
