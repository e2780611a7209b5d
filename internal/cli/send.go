package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	_ "image/jpeg" // register decoders for --image
	_ "image/png"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/image/draw"

	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func runSend(ctx context.Context, env Env, args []string) error {
	fs := newFlagSet(env, "send", "send [flags]")
	natsURL := fs.String("nats", envOr(env, "CASCADE_NATS_URL", "nats://127.0.0.1:4222"), "NATS server URL")
	pipeline := fs.String("pipeline", envOr(env, "CASCADE_PIPELINE", "mnist"), "pipeline to send to")
	count := fs.Int("n", 10, "number of MNIST test images to send")
	from := fs.Int("from", 0, "index of the first MNIST test image")
	imageFile := fs.String("image", "", "send this PNG/JPEG image instead (any size; made 28×28 grayscale)")
	invert := fs.Bool("invert", false, "invert the image (MNIST digits are white on black)")
	timeout := fs.Duration("timeout", 5*time.Second, "per-request deadline")
	probs := fs.Bool("probs", false, "ask for and print class probabilities")
	asJSON := fs.Bool("json", false, "print each result as JSON")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	items, err := sendItems(*imageFile, *invert, *from, *count)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(*natsURL, nats.Name("cascadeserve-send"))
	if err != nil {
		return fmt.Errorf("connect to %s: %w (is `cascadeserve up` running?)", natsbus.RedactURL(*natsURL), err)
	}
	defer nc.Close()
	codec := wire.NewCodec()
	tw := tabwriter.NewWriter(env.Stdout, 0, 2, 2, ' ', 0)
	if !*asJSON {
		fmt.Fprintln(tw, "ITEM\tTRUE\tLABEL\tCONF\tANSWERED_BY\tGEAR\tPATH\tLATENCY")
	}
	correct, answered := 0, 0
	for _, it := range items {
		req := wire.Request{Input: wire.FP32Tensor(mnist.ItemShape(), it.values), TimeoutMs: timeout.Milliseconds(), ReturnProbabilities: *probs}
		b, err := codec.EncodeRequest(&req)
		if err != nil {
			return err
		}
		start := time.Now()
		res, err := requestResult(ctx, nc, *pipeline, it.name, b, *timeout+time.Second)
		if err != nil {
			return err
		}
		if *asJSON {
			json.NewEncoder(env.Stdout).Encode(res)
			continue
		}
		if printSendResult(tw, it, &res, start, *probs) {
			answered++
			if res.Label == it.label {
				correct++
			}
		}
	}
	tw.Flush()
	if !*asJSON && *imageFile == "" && answered > 0 {
		fmt.Fprintf(env.Stdout, "\n%d/%d correct\n", correct, answered)
	}
	return nil
}

// sendItem is one image send sends: its name in the output, its values
// and its true label (-1: unknown).
type sendItem struct {
	name   string
	values []float32
	label  int
}

// sendItems is what send sends: the image file when one is given, else
// count MNIST test images from index from.
func sendItems(imageFile string, invert bool, from, count int) ([]sendItem, error) {
	if imageFile != "" {
		v, err := loadImage(imageFile, invert)
		if err != nil {
			return nil, err
		}
		return []sendItem{{name: imageFile, values: v, label: -1}}, nil
	}
	set, err := mnist.TestImages()
	if err != nil {
		return nil, err
	}
	if from < 0 || count < 1 || from+count > set.Len() {
		return nil, fmt.Errorf("%w: --from %d -n %d is outside the %d test images", ErrUsage, from, count, set.Len())
	}
	var items []sendItem
	for i := from; i < from+count; i++ {
		items = append(items, sendItem{name: fmt.Sprintf("test[%d]", i), values: set.Item(i), label: int(set.Labels[i])})
	}
	return items, nil
}

// requestResult sends the encoded request b of the item named name to the
// pipeline's infer subject and decodes the result, waiting at most wait.
func requestResult(ctx context.Context, nc *nats.Conn, pipeline, name string, b []byte, wait time.Duration) (wire.Result, error) {
	rctx, cancel := context.WithTimeout(ctx, wait)
	msg, err := nc.RequestWithContext(rctx, wire.InferSubject(pipeline), b)
	cancel()
	if err != nil {
		return wire.Result{}, fmt.Errorf("request %s: %w (no ingress listening on %s?)", name, err, wire.InferSubject(pipeline))
	}
	var res wire.Result
	if err := wire.DecodeResult(msg.Data, &res); err != nil {
		return wire.Result{}, fmt.Errorf("result of %s: %w", name, err)
	}
	return res, nil
}

// printSendResult writes the table row of it's result res, sent at start
// (and its probabilities with probs), and reports whether it was answered
// (not an error).
func printSendResult(tw io.Writer, it sendItem, res *wire.Result, start time.Time, probs bool) (answered bool) {
	truth := "-"
	if it.label >= 0 {
		truth = fmt.Sprint(it.label)
	}
	if res.Error != nil {
		fmt.Fprintf(tw, "%s\t%s\terror\t\t\t\t%s\t%v\n", it.name, truth, res.Error, time.Since(start).Round(time.Microsecond))
		return false
	}
	path := make([]string, len(res.Visits))
	for i, v := range res.Visits {
		path[i] = fmt.Sprintf("%s(%.2f)", v.Model, v.Confidence)
	}
	flag := ""
	if res.Degraded {
		flag = " degraded"
	}
	fmt.Fprintf(tw, "%s\t%s\t%d\t%.3f\t%s\t%s\t%s%s\t%v\n", it.name, truth, res.Label, res.Confidence, res.AnsweredBy, res.Gear, strings.Join(path, "→"), flag, time.Since(start).Round(time.Microsecond))
	if probs && len(res.Probabilities) > 0 {
		fmt.Fprintf(tw, "\tprobabilities\t%.3f\n", res.Probabilities)
	}
	return true
}

// loadImage decodes a PNG or JPEG, converts it to 28×28 grayscale in [0,1].
func loadImage(path string, invert bool) ([]float32, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	src, _, err := image.Decode(f)
	if err != nil {
		return nil, fmt.Errorf("decode image %s: %w", path, err)
	}
	dst := image.NewGray(image.Rect(0, 0, 28, 28))
	draw.BiLinear.Scale(dst, dst.Bounds(), src, src.Bounds(), draw.Src, nil)
	out := make([]float32, 28*28)
	for i, p := range dst.Pix {
		v := float32(p) / 255
		if invert {
			v = 1 - v
		}
		out[i] = v
	}
	return out, nil
}

func envOr(env Env, key, def string) string {
	if env.Getenv != nil {
		if v := env.Getenv(key); v != "" {
			return v
		}
	}
	return def
}
