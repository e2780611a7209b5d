package natstest

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// DeployPasswords are the passwords tests give the users of
// deploy/nats/accounts.conf, which has no defaults.
var DeployPasswords = map[string]string{
	"controller": "testController", "ingress": "testIngress", "worker": "testWorker",
	"producer": "testProducer", "billing": "testBilling", "sys": "testSys",
}

// PasswordVar is the variable accounts.conf reads user's password from.
func PasswordVar(user string) string { return "CASCADE_" + strings.ToUpper(user) + "_PASSWORD" }

// SetDeployPasswords sets every user's password variable to its
// DeployPasswords entry until t ends.
func SetDeployPasswords(t testing.TB) {
	for user, pw := range DeployPasswords {
		t.Setenv(PasswordVar(user), pw)
	}
}

// StartConfigFile starts nats-server from a shipped config file (such as
// deploy/nats/single.conf, which includes accounts.conf; the passwords it
// reads must be set, see SetDeployPasswords) with its monitoring off; see
// StartOptions.
func StartConfigFile(t testing.TB, file string) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatal(err)
	}
	opts.HTTPPort = 0
	return StartOptions(t, opts)
}

// StartOptions starts nats-server with opts (a parsed shipped config) on
// loopback and a free client port, its store in t.TempDir(), without logs
// or signal handlers, and waits until it accepts connections. It is shut
// down by t.Cleanup.
func StartOptions(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.StoreDir, opts.NoLog, opts.NoSigs = t.TempDir(), true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return srv
}

// ConnectAs connects to url as user of accounts.conf with its
// DeployPasswords password, closed by t.Cleanup. A non-empty inboxPrefix is
// its nats.CustomInboxPrefix; errs, if set, receives the asynchronous
// errors the server sends (permissions violations).
func ConnectAs(t testing.TB, url, user, inboxPrefix string, errs chan<- error) *nats.Conn {
	t.Helper()
	opts := []nats.Option{nats.UserInfo(user, DeployPasswords[user])}
	if inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(inboxPrefix))
	}
	if errs != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc
}
