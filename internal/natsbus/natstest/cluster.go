package natstest

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cluster is a running JetStream cluster of embedded servers with one
// client connection (to the first server).
type Cluster struct {
	Servers []*server.Server
	// Names are the servers' names, n1 … nN, in the order of Servers.
	Names []string
	Conn  *nats.Conn
	JS    jetstream.JetStream
}

// StartCluster starts an n-node JetStream cluster on loopback (free client
// and route ports, a store per server in t.TempDir()), waits until its
// meta leader sees every node, and connects to it. Shut down by t.Cleanup.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := freePorts(t, n)
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	c := &Cluster{}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		opts := &server.Options{
			ServerName: name,
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "test", Host: "127.0.0.1", Port: ports[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("start cluster node %s: %v", name, err)
		}
		log := &testLogger{t: t}
		s.SetLogger(log, false, false)
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
			log.stop()
		})
		go s.Start()
		c.Servers = append(c.Servers, s)
		c.Names = append(c.Names, name)
	}
	for _, s := range c.Servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("cluster node %s not ready after 10s", s.Name())
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for !c.metaReady() {
		if time.Now().After(deadline) {
			t.Fatalf("cluster of %d: no JetStream meta leader seeing every node after 30s", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	nc, err := nats.Connect(c.Servers[0].ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if c.JS, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	c.Conn = nc
	return c
}

// metaReady: a server leads the meta group and sees every node with
// JetStream.
func (c *Cluster) metaReady() bool {
	for _, s := range c.Servers {
		if s.JetStreamIsLeader() {
			peers := s.JetStreamClusterPeers()
			slices.Sort(peers)
			return slices.Equal(peers, c.Names)
		}
	}
	return false
}

// freePorts reserves n free loopback ports. They are released before the
// servers bind them; another process taking one meanwhile is unlikely.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
