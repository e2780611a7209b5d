package client_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const thisModule = "github.com/cascadeserve/cascadeserve"

// producerMain is a producer in a module of its own: what a user writes
// against pkg/client and pkg/wire.
const producerMain = `// Command producer sends an image to a CascadeServe pipeline, submits a job
// and reads the job's result.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/pkg/client"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func main() {
	nc, err := nats.Connect(nats.DefaultURL, nats.CustomInboxPrefix("_INBOX.default"))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc, "mnist", client.WithClient(wire.DefaultClient))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pixels := make([]float32, 28*28)
	res, err := c.InferFloat32(ctx, []int64{1, 28, 28}, pixels, client.WithTimeout(time.Second), client.WithIdempotencyKey("producer-1"))
	var werr *wire.Error
	if errors.As(err, &werr) {
		log.Fatalf("refused: %s: %s", werr.Code, werr.Message)
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Label, res.Confidence, res.AnsweredBy)

	batch, err := c.Infer(ctx, wire.Tensor{Datatype: wire.UINT8, Shape: []int64{2, 1, 28, 28}, Data: make([]byte, 2*28*28)})
	if err != nil {
		log.Fatal(err)
	}
	for _, it := range batch.Items {
		fmt.Println(it.Index, it.Label, it.Error)
	}

	job, err := c.Submit(ctx, &wire.Request{Input: wire.FP32Tensor([]int64{1, 28, 28}, pixels)}, client.WithMsgID("producer-job-1"))
	if err != nil {
		log.Fatal(err)
	}
	err = c.Results(ctx, func(r *wire.Result) error {
		fmt.Println(r.ID, r.Label, r.Error)
		if r.ID == job.ID {
			cancel()
		}
		return nil
	}, client.WithPrefetch(8))
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}
`

// requires returns the module requirements of a go.mod, "path version"
// each, direct and indirect.
func requires(t *testing.T, gomod []byte) (goLine string, reqs []string) {
	t.Helper()
	inBlock := false
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, "//"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		switch {
		case strings.HasPrefix(line, "go "):
			goLine = line
		case line == "require (":
			inBlock = true
		case inBlock && line == ")":
			inBlock = false
		case inBlock && line != "":
			reqs = append(reqs, line)
		case strings.HasPrefix(line, "require "):
			reqs = append(reqs, strings.TrimSpace(strings.TrimPrefix(line, "require ")))
		}
	}
	if goLine == "" || len(reqs) == 0 {
		t.Fatalf("go.mod: no go line or no requirements")
	}
	return goLine, reqs
}

// TestProducerModuleBuilds writes a producer in a module of its own
// (example.com/producer) that imports pkg/client and pkg/wire, with this
// repository as a replaced requirement, and builds and vets it: the public
// packages are importable from outside, and internal ones are not needed.
// It runs offline, from the module cache the repository's own build filled
// (GOPROXY=off), with this module's requirements and go.sum.
func TestProducerModuleBuilds(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		if goroot := os.Getenv("GOROOT"); goroot != "" {
			goTool, err = exec.LookPath(filepath.Join(goroot, "bin", "go"))
		}
	}
	if err != nil {
		t.Skipf("the go tool is not available, so no module can be built: %v", err)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	gosum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	goLine, reqs := requires(t, gomod)

	dir := t.TempDir()
	var mod strings.Builder
	mod.WriteString("module example.com/producer\n\n" + goLine + "\n\nrequire " + thisModule + " v0.0.0-00010101000000-000000000000\n\nrequire (\n")
	for _, r := range reqs {
		mod.WriteString("\t" + r + "\n")
	}
	mod.WriteString(")\n\nreplace " + thisModule + " => " + root + "\n")
	for name, body := range map[string][]byte{"go.mod": []byte(mod.String()), "go.sum": gosum, "main.go": []byte(producerMain)} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	env := append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local")
	for _, args := range [][]string{{"build", "-o", filepath.Join(dir, "producer"), "."}, {"vet", "."}} {
		cmd := exec.Command(goTool, args...)
		cmd.Dir, cmd.Env = dir, env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s in a module of its own: %v\n%s\ngo.mod:\n%s", strings.Join(args, " "), err, out, mod.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "producer")); err != nil {
		t.Fatalf("no binary: %v", err)
	}
}
