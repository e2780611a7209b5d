package system_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/cli"
	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/natsbus/natstest"
	"github.com/cascadeserve/cascadeserve/internal/system"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// digitsLadder are the models of testdata/digits (make_digits.py): UINT8
// [N,28,28] input named "pixels" or "image_u8", softmax probabilities
// named "probs" or "class_probs", trained on MNIST test items [0, 5000).
var digitsLadder = []string{"tiny", "small", "wide"}

const (
	digitsImages = "../../models/mnist/data/t10k-images-idx3-ubyte.gz"
	digitsLabels = "../../models/mnist/data/t10k-labels-idx1-ubyte.gz"
)

// cascadeserve runs the CLI in this process.
func cascadeserve(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := cli.Run(context.Background(), cli.Env{Stdout: &out, Stderr: &errOut, Getenv: os.Getenv}, args); err != nil {
		t.Fatalf("cascadeserve %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

// TestBringYourOwnModels takes a ladder unlike the embedded one (UINT8
// input of shape [28,28], probabilities out, tensor names of its own,
// pipeline "digits") through replay, profile and plan, serves the plan
// with the all-in-one system, and checks that what HTTP (UINT8) and NATS
// (FP32) requests get back is what the replay predicts for the served gear:
// offline and online feed the models the same inputs.
func TestBringYourOwnModels(t *testing.T) {
	requireORT(t)
	began := time.Now()
	dir := t.TempDir()
	for _, m := range digitsLadder {
		b, err := os.ReadFile(filepath.Join("testdata", "digits", m+".onnx"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, m+".onnx"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ladder := strings.Join(digitsLadder, ",")
	replay := func(out, rng string) *plan.Replay {
		cascadeserve(t, "replay", "--images", digitsImages, "--labels", digitsLabels, "--range", rng,
			"--model-dir", dir, "--ladder", ladder, "--quiet", "--out", out)
		r, err := plan.ReadReplayFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	// Offline: replay on validation items, a short profile, a plan.
	val := replay(filepath.Join(dir, "val.csreplay.gz"), "5000:8000")
	if !slices.Equal(val.ItemShape, []int64{28, 28}) || val.UINT8Scale != 1.0/255 {
		t.Fatalf("replay recorded input %v scale %v, want [28 28] 1/255", val.ItemShape, val.UINT8Scale)
	}
	profile := filepath.Join(dir, "profile.json")
	cascadeserve(t, "profile", "--model-dir", dir, "--ladder", ladder, "--max-batch", "16", "--reps", "3", "--warmup", "1",
		"--hop-samples", "20", "--quiet", "--out", profile)
	planFile := filepath.Join(dir, "plan.json")
	cascadeserve(t, "plan", "--replay", filepath.Join(dir, "val.csreplay.gz"), "--profile", profile, "--pipeline", "digits",
		"--slo", "200ms", "--capacity", "2", "--qps", "10:40", "--buckets", "2", "--grid", "11", "--sim-requests", "300",
		"--out", planFile)
	p, err := plan.LoadFile(planFile)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Input.Shape, []int64{28, 28}) || p.Input.UINT8Scale != 1.0/255 || p.Pipeline != "digits" {
		t.Fatalf("plan input %+v pipeline %s, want the replay's input, pipeline digits", p.Input, p.Pipeline)
	}
	for _, m := range p.Models {
		// Raw bytes in, as trained: far above chance (10%).
		if m.Accuracy < 0.8 {
			t.Errorf("model %s: validation accuracy %.2f%%, want >= 80%%", m.Name, 100*m.Accuracy)
		}
	}
	gear := p.Gears[0] // the most accurate
	t.Logf("offline (%v): serving gear %s %v, predicted %.2f%% on validation", time.Since(began).Round(time.Millisecond),
		gear.ID, gear.Cascade, 100*gear.Predicted.Accuracy)

	// What the replay predicts for the served gear on the served images.
	const from, to = 8000, 8400
	test := replay(filepath.Join(dir, "test.csreplay.gz"), fmt.Sprintf("%d:%d", from, to))
	want, _, tie := plantest.ReplayGear(p, gear, test)
	predicted := 0
	for i, l := range want {
		if l == int(test.Labels[i]) {
			predicted++
		}
	}

	// Online: the all-in-one system serving the plan (models resolved
	// relative to the plan's folder), gear pinned.
	addr := natstest.FreeAddr(t)
	sys := startConfig(t, system.Config{DataDir: t.TempDir(), NATSPort: -1, PlanFile: planFile,
		Env: map[string]string{"CASCADE_GEAR": gear.ID, "CASCADE_HTTP_ADDR": addr}})
	set, err := dataset.ReadIDXFiles(digitsImages, digitsLabels, nil)
	if err != nil {
		t.Fatal(err)
	}
	if set, err = set.Slice(from, to); err != nil {
		t.Fatal(err)
	}
	codec := wire.NewCodec()
	doors := map[string]func(i int) (*wire.Result, error){
		// HTTP JSON with the image's bytes as UINT8.
		"http-uint8": func(i int) (*wire.Result, error) {
			px := make([]string, 0, set.ItemSize())
			for _, b := range set.ItemBytes(i) {
				px = append(px, strconv.Itoa(int(b)))
			}
			body := `{"inputs":[{"name":"input","shape":[28,28],"datatype":"UINT8","data":[` + strings.Join(px, ",") + `]}]}`
			resp, err := http.Post("http://"+addr+"/v2/models/digits/infer", "application/json", strings.NewReader(body))
			if err != nil {
				return nil, err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				return nil, err
			}
			if resp.StatusCode != http.StatusOK {
				return nil, fmt.Errorf("status %d: %s", resp.StatusCode, b)
			}
			var res wire.Result
			return &res, wire.DecodeOIPResponse(b, &res)
		},
		// NATS msgpack with the image as FP32 pixels in [0,1] (the IDX
		// loader's byte/255): turned back into the same bytes for the
		// UINT8 models.
		"nats-fp32": func(i int) (*wire.Result, error) {
			body, err := codec.EncodeRequest(&wire.Request{Input: wire.FP32Tensor([]int64{28, 28}, set.Item(i)), TimeoutMs: 20000})
			if err != nil {
				return nil, err
			}
			msg, err := sys.Conn.Request(wire.InferSubject("digits"), body, 30*time.Second)
			if err != nil {
				return nil, err
			}
			var res wire.Result
			return &res, wire.DecodeResultBody(msg.Header.Get(wire.HeaderContentType), msg.Data, &res)
		},
	}
	for door, send := range doors {
		got := make([]int, set.Len())
		var wg sync.WaitGroup
		errs := make(chan error, set.Len())
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < set.Len(); i += 8 {
					res, err := send(i)
					switch {
					case err != nil:
						errs <- fmt.Errorf("image %d: %w", from+i, err)
					case res.Error != nil:
						errs <- fmt.Errorf("image %d: %v", from+i, res.Error)
					default:
						got[i] = res.Label
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("%s: %v", door, err)
		}
		served, differ := 0, 0
		for i, l := range got {
			if l == int(set.Labels[i]) {
				served++
			}
			if l != want[i] && !tie[i] {
				differ++
			}
		}
		n := float64(set.Len())
		t.Logf("%s: served accuracy %.2f%%, replay predicts %.2f%%; %d of %d answers differ from the replay's (near-ties aside)",
			door, 100*float64(served)/n, 100*float64(predicted)/n, differ, set.Len())
		if served < int(0.8*n) || math.Abs(float64(served-predicted))/n > 0.005 {
			t.Errorf("%s: served accuracy %.2f%% is more than 0.5 points from the replay's %.2f%% for gear %s",
				door, 100*float64(served)/n, 100*float64(predicted)/n, gear.ID)
		}
	}
	t.Logf("whole test: %v", time.Since(began).Round(time.Millisecond))
}
