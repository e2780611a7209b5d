package system_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"

	"github.com/cascadeserve/cascadeserve/internal/loadgen"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/internal/wire"
	"github.com/cascadeserve/cascadeserve/models/mnist"
)

// composeFile is the subset of deploy/compose.yaml the test reads.
type composeFile struct {
	Services map[string]struct {
		Environment map[string]string `yaml:"environment"`
		Deploy      struct {
			Replicas int `yaml:"replicas"`
		} `yaml:"deploy"`
	} `yaml:"services"`
}

// composeDefault replaces ${VAR:-default} with its default, as compose does
// when VAR is unset.
var composeDefault = regexp.MustCompile(`\$\{[A-Z0-9_]+:-([^}]*)\}`)

// TestComposeDeploymentServesWithRolePermissions runs what deploy/compose.yaml
// deploys, without Docker: nats-server with deploy/nats/single.conf (its
// accounts and per-role permissions), and the controller, ingress and stage
// workers with the environment, users and replicas compose gives them. A
// producer (the producer user) then sends MNIST images by request-reply and
// a durable job, and reads the job's result from the results stream; every
// one is answered. A producer publishing into a model's work queue is
// refused by the server.
func TestComposeDeploymentServesWithRolePermissions(t *testing.T) {
	requireORT(t)
	raw, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(raw, &cf); err != nil {
		t.Fatalf("parse compose.yaml: %v", err)
	}
	natsSvc, ok := cf.Services["nats"]
	if !ok {
		t.Fatal("compose.yaml has no nats service")
	}
	// The server reads the role passwords from its environment.
	for k, v := range natsSvc.Environment {
		t.Setenv(k, composeDefault.ReplaceAllString(v, "$1"))
	}
	opts, err := server.ProcessConfigFile("../../deploy/nats/single.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
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
	hostPort := strings.TrimPrefix(srv.ClientURL(), "nats://")

	// Each service gets compose's environment, pointed at this server;
	// metrics and HTTP ports stay closed (tests run side by side).
	serviceEnv := map[string]map[string]string{}
	for _, name := range []string{"controller", "ingress", "stage-worker"} {
		svc, ok := cf.Services[name]
		if !ok {
			t.Fatalf("compose.yaml has no %s service", name)
		}
		env := map[string]string{}
		for k, v := range svc.Environment {
			env[k] = strings.Replace(composeDefault.ReplaceAllString(v, "$1"), "@nats:4222", "@"+hostPort, 1)
		}
		if !strings.Contains(env["CASCADE_NATS_URL"], "@"+hostPort) {
			t.Fatalf("%s: CASCADE_NATS_URL %q does not name the nats service with a user", name, env["CASCADE_NATS_URL"])
		}
		env["CASCADE_METRICS_ADDR"], env["CASCADE_HTTP_ADDR"] = "", ""
		serviceEnv[name] = env
	}
	workers := cf.Services["stage-worker"].Deploy.Replicas
	if workers < 1 {
		t.Fatalf("stage-worker replicas %d", workers)
	}
	producerURL := fmt.Sprintf("nats://producer:%s@%s", os.Getenv("CASCADE_PRODUCER_PASSWORD"), hostPort)

	sys := startConfig(t, system.Config{NATSURL: producerURL, ServiceEnv: serviceEnv, Workers: workers})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Request-reply as the producer.
	images, err := mnist.TestImages()
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	rep, err := loadgen.Run(ctx, sys.Conn, loadgen.Config{
		Pipeline: "mnist", Items: images, Concurrency: 16, MaxRequests: n, Timeout: 30 * time.Second, Client: "compose-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sent != n || rep.Answered != n || rep.Lost != 0 || len(rep.ErrorCounts()) != 0 {
		t.Fatalf("request-reply as producer: sent %d, answered %d, lost %d, errors %v", rep.Sent, rep.Answered, rep.Lost, rep.ErrorCounts())
	}

	// A durable job as the producer, its result read from the results
	// stream with the producer's permissions.
	js, err := jetstream.New(sys.Conn)
	if err != nil {
		t.Fatal(err)
	}
	codec := wire.NewCodec()
	body, err := codec.EncodeRequest(&wire.Request{ID: "compose-job-1", Input: wire.FP32Tensor(sys.Plan.Input.Shape, images.Item(0))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, wire.JobsSubject("mnist", "compose"), body, jetstream.WithMsgID("compose-job-1")); err != nil {
		t.Fatalf("publish a job as producer: %v", err)
	}
	cons, err := js.OrderedConsumer(ctx, wire.ResultsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{wire.ResultSubject("mnist", "compose")},
	})
	if err != nil {
		t.Fatalf("read results as producer: %v", err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(30 * time.Second))
	if err != nil {
		t.Fatalf("no result for the job: %v", err)
	}
	var res wire.Result
	if err := wire.DecodeResult(msg.Data(), &res); err != nil {
		t.Fatal(err)
	}
	if res.ID != "compose-job-1" || res.Error != nil || res.AnsweredBy == "" {
		t.Fatalf("job result %+v", res)
	}

	// The producer may not write into a model's work queue.
	refused := make(chan error, 1)
	nc, err := nats.Connect(producerURL, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case refused <- err:
		default:
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish(wire.ModelSubject("mnist", sys.Plan.Ladder[0]), body); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-refused:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("publish to a model queue as producer: %v, want a permissions violation", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("a producer's publish to a model queue was not refused")
	}
}
