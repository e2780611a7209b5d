package cli

import (
	"errors"
	"fmt"
	"net"
	"strconv"
)

// listenAddr is an address a command is about to listen on, and what for.
type listenAddr struct {
	what, addr string
}

// listenAddrs lists what `up` listens on: the ingress's HTTP endpoint, the
// metrics endpoint and, without --nats, the embedded nats-server's client
// and monitoring ports (on 127.0.0.1, see natsembed.StartServer). Empty
// addresses and ports left to the system (0, -1) are skipped.
func (f *systemFlags) listenAddrs(httpAddr, metricsAddr string) []listenAddr {
	var out []listenAddr
	if httpAddr != "" {
		out = append(out, listenAddr{"HTTP (--http)", httpAddr})
	}
	if metricsAddr != "" {
		out = append(out, listenAddr{"metrics (--metrics)", metricsAddr})
	}
	if f.natsURL == "" {
		if f.natsPort > 0 {
			out = append(out, listenAddr{"NATS client (--port)", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.natsPort))})
		}
		if f.monitorPort > 0 {
			out = append(out, listenAddr{"NATS monitoring (--monitor-port)", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.monitorPort))})
		}
	}
	return out
}

// checkListenAddrs listens on every address and closes them again, and
// reports each one that is taken (by another process, or twice in addrs).
// A command checks before it starts anything, so a busy port is a clear
// error up front instead of a failure after it said it was up.
func checkListenAddrs(addrs []listenAddr) error {
	var errs []error
	var open []net.Listener
	defer func() {
		for _, ln := range open {
			ln.Close()
		}
	}()
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s address %s is not available: %w", a.what, a.addr, err))
			continue
		}
		open = append(open, ln)
	}
	return errors.Join(errs...)
}
