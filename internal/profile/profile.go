// Package profile measures what the planner needs to know about the target
// hardware: each model's latency per batch size through the same ONNX
// Runtime runner the stage workers use, and what the NATS JetStream path
// costs on an embedded nats-server: the latency of one hop (publish with
// PubAck, fetch, ack) and the worker time spent on messaging, per item and
// per batch. The result is a plan.ProfileFile.
//
// Latencies are medians of repeated runs, rounded to 4 significant digits
// and made non-decreasing in batch size (a larger batch measured faster is
// noise on a busy machine).
package profile

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/internal/modelinput"
	"github.com/cascadeserve/cascadeserve/internal/natsbus"
	"github.com/cascadeserve/cascadeserve/internal/natsembed"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Model is one model to profile.
type Model struct {
	Name string
	ONNX []byte
}

// Config configures Measure. Zero values take the documented defaults.
type Config struct {
	// Models are profiled in this order.
	Models []Model
	// Threads is the intra-op thread count of every session (default 1),
	// as the workers will run them.
	Threads int
	// Provider is the ONNX Runtime execution provider ("cpu" by default).
	Provider string
	// CUDA configures the CUDA provider (ignored with the CPU provider).
	// Measure with the options the workers will run with.
	CUDA onnxrt.CUDAOptions
	// MaxBatch is the largest batch size measured; sizes are 1, 2, 4, …
	// up to it (default 128).
	MaxBatch int
	// Repetitions is the number of timed runs per batch size (default 15),
	// made in three rounds over every batch size (a third each, at least
	// one); each round's median is taken and the lowest of them kept, so a
	// slow spell of the machine while one size is measured spoils one
	// round, not the point.
	Repetitions int
	// Warmup is the number of untimed runs before them (default 3).
	Warmup int
	// HopSamples is the number of timed hops through NATS (default 300);
	// negative skips the NATS measurements (hop and item overhead).
	HopSamples int
	// HopPayloadBytes is the size of each hop's message (default: one item
	// of the first model as float32, plus 256 bytes of envelope).
	HopPayloadBytes int
	// Progress, when set, is called after each measured point with how many
	// of total are done and what was measured.
	Progress func(done, total int, what string)
}

func (c *Config) defaults() {
	c.Threads = cmp.Or(c.Threads, 1)
	c.MaxBatch = cmp.Or(c.MaxBatch, 128)
	c.Repetitions = cmp.Or(c.Repetitions, 15)
	c.Warmup = cmp.Or(c.Warmup, 3)
	c.HopSamples = cmp.Or(c.HopSamples, 300)
	if c.Progress == nil {
		c.Progress = func(int, int, string) {}
	}
	c.Provider = cmp.Or(c.Provider, onnxrt.ProviderCPU)
}

// BatchSizes returns the batch sizes measured up to max: 1, 2, 4, …, and
// max itself when it is not a power of two.
func BatchSizes(max int) []int {
	var out []int
	for b := 1; b <= max; b *= 2 {
		out = append(out, b)
	}
	if len(out) > 0 && out[len(out)-1] != max && max > 0 {
		out = append(out, max)
	}
	return out
}

// Measure profiles every model with rt and measures the hop overhead.
func Measure(ctx context.Context, rt *onnxrt.Runtime, c Config) (*plan.ProfileFile, error) {
	c.defaults()
	var errs []error
	if len(c.Models) == 0 {
		errs = append(errs, errors.New("no models"))
	}
	if c.Threads < 1 || c.MaxBatch < 1 || c.Repetitions < 1 || c.Warmup < 0 {
		errs = append(errs, fmt.Errorf("threads %d, max batch %d, repetitions %d must be >= 1 and warmup %d >= 0", c.Threads, c.MaxBatch, c.Repetitions, c.Warmup))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	batches := BatchSizes(c.MaxBatch)
	total := len(c.Models) * len(batches)
	if c.HopSamples > 0 {
		total++
	}
	f := &plan.ProfileFile{
		Version:     plan.ProfileFormatVersion,
		Threads:     c.Threads,
		Provider:    c.Provider,
		Host:        hostDescription(),
		Runtime:     "onnxruntime " + rt.Version(),
		MeasuredAt:  time.Now().UTC().Truncate(time.Second),
		Repetitions: profileRounds * max(c.Repetitions/profileRounds, 1),
		Models:      map[string]plan.Profile{},
	}
	if c.Provider == onnxrt.ProviderCUDA {
		opts, err := c.CUDA.ProviderOptions()
		if err != nil {
			return nil, fmt.Errorf("profile: %w", err)
		}
		if c.CUDA.PinHostBuffers {
			opts["pin_host_buffers"] = "1"
		}
		f.ProviderOptions = opts
	}
	done := 0
	itemBytes := 0
	for _, m := range c.Models {
		prof, item, err := measureModel(ctx, rt, m, c, batches, func(b int) {
			done++
			c.Progress(done, total, fmt.Sprintf("%s batch %d", m.Name, b))
		})
		if err != nil {
			return nil, fmt.Errorf("profile model %q: %w", m.Name, err)
		}
		if itemBytes == 0 {
			itemBytes = 4 * item
		}
		f.Models[m.Name] = prof
	}
	if c.HopSamples > 0 {
		payload := c.HopPayloadBytes
		if payload == 0 {
			payload = itemBytes + 256
		}
		cost, err := MeasureNATS(ctx, c.HopSamples, payload)
		if err != nil {
			return nil, fmt.Errorf("profile: %w", err)
		}
		f.HopOverheadMs = roundSig(cost.HopMs, 4)
		f.ItemOverheadMs = roundSig(cost.ItemMs, 4)
		f.BatchOverheadMs = roundSig(cost.BatchMs, 4)
		done++
		c.Progress(done, total, "NATS hop")
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	return f, nil
}

// measureModel times one model at every batch size and returns its profile
// and its item size.
func measureModel(ctx context.Context, rt *onnxrt.Runtime, m Model, c Config, batches []int, progress func(batch int)) (plan.Profile, int, error) {
	sess, err := rt.Open(m.Name, m.ONNX, onnxrt.SessionOptions{IntraOpThreads: c.Threads, Provider: c.Provider, CUDA: c.CUDA})
	if err != nil {
		return plan.Profile{}, 0, err
	}
	defer sess.Close()
	info := sess.Info()
	item := info.ItemSize()
	// Random byte items through the workers' input transform: a uint8
	// model gets bytes, a float32 model bytes × 1/255 (timing does not
	// depend on the pipeline's scale).
	tr, err := modelinput.New(m.Name, info.InputType, item, 1.0/255)
	if err != nil {
		return plan.Profile{}, 0, err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	raw := make([]uint8, item)
	var input modelinput.Batch
	for range batches[len(batches)-1] {
		for i := range raw {
			raw[i] = uint8(rng.IntN(256))
		}
		if err := tr.AppendBytes(&input, raw); err != nil {
			return plan.Profile{}, 0, err
		}
	}
	prof := plan.Profile{Threads: c.Threads, Provider: c.Provider}
	dst := make([]float32, batches[len(batches)-1]*info.NumClasses)
	times := make([]time.Duration, max(c.Repetitions/profileRounds, 1))
	best := make([]time.Duration, len(batches))
	for round := range profileRounds {
		for k, b := range batches {
			in := tr.Slice(&input, 0, b)
			for range c.Warmup {
				if _, err := tr.Run(sess, &in, dst); err != nil {
					return plan.Profile{}, 0, fmt.Errorf("batch %d: %w", b, err)
				}
			}
			for r := range times {
				if err := ctx.Err(); err != nil {
					return plan.Profile{}, 0, err
				}
				start := time.Now()
				if _, err := tr.Run(sess, &in, dst); err != nil {
					return plan.Profile{}, 0, fmt.Errorf("batch %d: %w", b, err)
				}
				times[r] = time.Since(start)
			}
			if m := median(times); round == 0 || m < best[k] {
				best[k] = m
			}
			if round == profileRounds-1 {
				progress(b)
			}
		}
	}
	prof.Points = profilePoints(batches, best)
	return prof, item, nil
}

// profilePoints turns the best median of each batch size (ascending) into
// profile points, in ms rounded to 4 significant digits. A larger batch
// never takes less time than a smaller one (a lower median is noise), nor
// longer than the smaller one run as many times as it takes to cover it (a
// runner could split it; a higher median is a slow spell of the machine).
func profilePoints(batches []int, best []time.Duration) []plan.ProfilePoint {
	var pts []plan.ProfilePoint
	for k, b := range batches {
		ms := roundSig(float64(best[k])/float64(time.Millisecond), 4)
		if n := len(pts); n > 0 {
			prev := pts[n-1]
			ms = max(ms, prev.LatencyMs)
			ms = min(ms, prev.LatencyMs*math.Ceil(float64(b)/float64(prev.Batch)))
		}
		pts = append(pts, plan.ProfilePoint{Batch: b, LatencyMs: max(ms, 1e-6)})
	}
	return pts
}

// profileRounds is how many rounds Measure spreads a model's timed runs
// over (Config.Repetitions).
const profileRounds = 3

// NATSCost is what messaging costs a stage worker.
type NATSCost struct {
	// HopMs is the median latency of one hop in ms: with a fetch
	// outstanding, publish a message with a message id, await its PubAck,
	// receive it from the fetch and ack it.
	HopMs float64
	// ItemMs and BatchMs split the time to move a batch as workers move
	// them (fetch an envelope of the batch's items, decode it, publish its
	// items as one envelope, await the PubAck, ack the input) into a part
	// per item and a part per batch (per envelope), in ms: moving a batch
	// of b takes BatchMs + b × ItemMs. They come from the median times of
	// batches of 1 and of 64.
	ItemMs  float64
	BatchMs float64
}

// natsBatch is the large batch size of the messaging-overhead measurement.
const natsBatch = 64

// MeasureNATS starts an embedded nats-server (loopback, free port,
// temporary file store) with work-queue streams and durable pull consumers
// configured like a model's, and measures the hop latency (median of
// samples) and the messaging cost per item and per batch (from the medians
// over 20 batches of 1 and 20 batches of 64) with payloadBytes messages.
func MeasureNATS(ctx context.Context, samples, payloadBytes int) (NATSCost, error) {
	if samples < 1 {
		return NATSCost{}, fmt.Errorf("measure nats: samples %d < 1", samples)
	}
	dir, err := os.MkdirTemp("", "cascadeserve-profile-*")
	if err != nil {
		return NATSCost{}, fmt.Errorf("measure nats: %w", err)
	}
	defer os.RemoveAll(dir)
	srv, err := natsembed.StartServer(natsembed.ServerConfig{Port: -1, StoreDir: dir})
	if err != nil {
		return NATSCost{}, fmt.Errorf("measure nats: %w", err)
	}
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	nc, err := nats.Connect(srv.ClientURL(), nats.Name("cascadeserve-profile"))
	if err != nil {
		return NATSCost{}, fmt.Errorf("measure nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return NATSCost{}, fmt.Errorf("measure nats: %w", err)
	}
	in, inSubject, err := workQueue(ctx, js, "in")
	if err != nil {
		return NATSCost{}, fmt.Errorf("measure nats: %w", err)
	}
	_, outSubject, err := workQueue(ctx, js, "out")
	if err != nil {
		return NATSCost{}, fmt.Errorf("measure nats: %w", err)
	}
	payload := make([]byte, max(payloadBytes, 1))
	var cost NATSCost
	if cost.HopMs, err = measureHop(ctx, js, in, inSubject, payload, samples); err != nil {
		return NATSCost{}, fmt.Errorf("measure nats: hop: %w", err)
	}
	// Batches of 1 and of natsBatch, interleaved so that both see the same
	// machine; 20 timed rounds each.
	one, many, err := measureBatches(ctx, js, in, inSubject, outSubject, payload, 20)
	if err != nil {
		return NATSCost{}, fmt.Errorf("measure nats: messaging overhead: %w", err)
	}
	cost.ItemMs = max(many-one, 0) / (natsBatch - 1)
	cost.BatchMs = max(one-cost.ItemMs, 0)
	return cost, nil
}

// workQueue creates the work-queue stream and consumer of a model named
// model in pipeline "profile".
func workQueue(ctx context.Context, js jetstream.JetStream, model string) (jetstream.Consumer, string, error) {
	stream, err := js.CreateOrUpdateStream(ctx, natsbus.ModelStreamConfig("profile", model, natsbus.TopologyConfig{}))
	if err != nil {
		return nil, "", fmt.Errorf("create stream: %w", err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, natsbus.ModelConsumerConfig(model, natsbus.TopologyConfig{}))
	if err != nil {
		return nil, "", fmt.Errorf("create consumer: %w", err)
	}
	return cons, stream.CachedInfo().Config.Subjects[0], nil
}

func measureHop(ctx context.Context, js jetstream.JetStream, cons jetstream.Consumer, subject string, payload []byte, samples int) (float64, error) {
	warmup := min(20, samples)
	times := make([]time.Duration, 0, samples)
	for i := range warmup + samples {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return 0, fmt.Errorf("fetch: %w", err)
		}
		start := time.Now()
		if _, err := js.Publish(ctx, subject, payload, jetstream.WithMsgID(fmt.Sprintf("hop-%d", i))); err != nil {
			return 0, fmt.Errorf("publish: %w", err)
		}
		msg, ok := <-batch.Messages()
		if !ok {
			return 0, fmt.Errorf("fetch returned no message: %w", batch.Error())
		}
		if err := msg.Ack(); err != nil {
			return 0, fmt.Errorf("ack: %w", err)
		}
		elapsed := time.Since(start)
		for range batch.Messages() {
			// Drain: the batch of one is complete.
		}
		if i >= warmup {
			times = append(times, elapsed)
		}
	}
	return float64(median(times)) / float64(time.Millisecond), nil
}

// measureBatches moves batches of items as the data plane does, in
// envelopes: a batch of b items arrives as one envelope of b items (the
// ingress's coalescing, or an escalation), is decoded, and leaves as one
// envelope of b items, published with a message id, its PubAck awaited,
// then the input acked. It alternates batches of 1 and of natsBatch items
// and returns the median time of each size over the timed rounds (the
// first round of each is a warm-up). The embedded server runs in this
// process, so its work is in the time too, as it is on a machine that runs
// nats-server next to the workers.
func measureBatches(ctx context.Context, js jetstream.JetStream, cons jetstream.Consumer, in, out string, payload []byte, rounds int) (one, many float64, err error) {
	codec := wire.NewCodec()
	envelope := func(id string, n int) ([]byte, error) {
		env := &wire.Envelope{ID: id, Items: make([]wire.Item, n)}
		for i := range env.Items {
			env.Items[i] = wire.Item{ID: fmt.Sprintf("%s-%d", id, i), Key: fmt.Sprintf("k-%s-%d", id, i), Pipeline: "profile",
				ReplyTo: "_INBOX.profile.0123456789abcdef", Input: wire.Tensor{Datatype: wire.FP32, Shape: []int64{int64(len(payload) / 4)}, Data: payload},
				DeadlineUnixNano: time.Now().Add(time.Minute).UnixNano()}
		}
		return codec.EncodeEnvelope(env)
	}
	for round := range rounds + 1 {
		for _, size := range []int{1, natsBatch} {
			body, err := envelope(fmt.Sprintf("load-%d-%d", round, size), size)
			if err != nil {
				return 0, 0, err
			}
			if _, err := js.Publish(ctx, in, body); err != nil {
				return 0, 0, fmt.Errorf("load: %w", err)
			}
		}
	}
	var ones, manys []time.Duration
	for round := range rounds + 1 {
		for _, size := range []int{1, natsBatch} {
			d, err := moveEnvelope(ctx, js, cons, out, codec, fmt.Sprintf("out-%d-%d", round, size))
			if err != nil {
				return 0, 0, err
			}
			if round == 0 {
				continue
			}
			if size == 1 {
				ones = append(ones, d)
			} else {
				manys = append(manys, d)
			}
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return ms(median(ones)), ms(median(manys)), nil
}

// moveEnvelope fetches one envelope, decodes it, publishes its items as one
// envelope with a message id, awaits the PubAck and acks the input, as a
// worker handles a batch's escalation, and returns how long that took.
func moveEnvelope(ctx context.Context, js jetstream.JetStream, cons jetstream.Consumer, out string, codec *wire.Codec, id string) (time.Duration, error) {
	start := time.Now()
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		return 0, fmt.Errorf("fetch: %w", err)
	}
	var msg jetstream.Msg
	for m := range batch.Messages() {
		msg = m
	}
	if msg == nil {
		return 0, fmt.Errorf("fetch returned no envelope: %v", batch.Error())
	}
	var env wire.Envelope
	if err := wire.DecodeEnvelope(msg.Data(), &env); err != nil {
		return 0, err
	}
	env.ID = id
	body, err := codec.EncodeEnvelope(&env)
	if err != nil {
		return 0, err
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: out, Data: body, Header: nats.Header{jetstream.MsgIDHeader: []string{id}}}); err != nil {
		return 0, fmt.Errorf("publish: %w", err)
	}
	if err := msg.Ack(); err != nil {
		return 0, fmt.Errorf("ack: %w", err)
	}
	return time.Since(start), nil
}

// roundSig rounds x to d significant digits, so profile files stay
// readable.
func roundSig(x float64, d int) float64 {
	if x == 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return x
	}
	p := math.Pow(10, float64(d)-math.Ceil(math.Log10(math.Abs(x))))
	return math.Round(x*p) / p
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// hostDescription names the machine: OS, architecture, CPUs and, on Linux,
// the CPU model.
func hostDescription() string {
	desc := fmt.Sprintf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				return desc + ", " + strings.TrimSpace(v)
			}
		}
	}
	return desc
}
