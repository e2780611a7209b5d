// Package loadgen drives a CascadeServe pipeline the way producers do: it
// sends labeled items as NATS request-reply requests to the pipeline's infer
// subject, either open-loop with Poisson arrivals following a rate schedule
// (MLPerf's server scenario) or closed-loop with a fixed number in flight
// (saturated throughput), and measures what comes back: latency, accuracy
// against the labels, which gear and model answered, and typed errors.
//
// One wildcard subscription receives every reply; requests never block the
// sender, so the offered load is what the schedule says even when the
// pipeline falls behind.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Schedule gives the offered rate (requests/s) at a time since the start.
type Schedule func(elapsed time.Duration) float64

// Constant returns a schedule of a fixed rate.
func Constant(qps float64) Schedule { return func(time.Duration) float64 { return qps } }

// Ramp returns a schedule that rises linearly from low to high over the first
// 40% of d, holds high for 20%, and falls back to low over the last 40%.
func Ramp(low, high float64, d time.Duration) Schedule {
	return func(t time.Duration) float64 {
		f := float64(t) / float64(d)
		switch {
		case f < 0.4:
			return low + (high-low)*f/0.4
		case f < 0.6:
			return high
		case f < 1:
			return high - (high-low)*(f-0.6)/0.4
		}
		return low
	}
}

// Config configures a run.
type Config struct {
	// Pipeline to send to.
	Pipeline string
	// Items are sent in order, cycling; Labels score the answers.
	Items *dataset.Set
	// Schedule is the offered rate for open-loop runs.
	Schedule Schedule
	// Concurrency > 0 selects a closed loop with this many requests in
	// flight instead of the schedule.
	Concurrency int
	// Duration bounds the sending phase; MaxRequests (if > 0) bounds the
	// number sent. After sending stops, the run waits up to Timeout for
	// outstanding replies.
	Duration    time.Duration
	MaxRequests int
	// Timeout is each request's deadline (sent as timeout_ms) and the wait
	// for stragglers at the end.
	Timeout time.Duration
	// Seed makes the Poisson arrivals reproducible.
	Seed uint64
	// Tick, if set, is called about every TickEvery with a snapshot.
	Tick      func(Snapshot)
	TickEvery time.Duration
	// Client is the client token sent with requests (default "loadgen").
	Client string
	// ReturnProbabilities asks for probabilities in results.
	ReturnProbabilities bool
	// Warmup excludes results of requests sent in the first Warmup from the
	// latency statistics.
	Warmup time.Duration
	// UINT8Scale > 0 sends items as UINT8 (value / UINT8Scale, a quarter of
	// the bytes of FP32) when every value of the request is such a byte
	// exactly, as a producer of 8-bit images does; the pipeline scales them
	// back (its plan's uint8_scale must be the same).
	UINT8Scale float64
	// BatchItems > 1 sends that many consecutive items per request, as one
	// batched input [BatchItems, item shape...]; rates, Sent and outcomes
	// then count items, Concurrency counts requests.
	BatchItems int
}

// Outcome is one request's result as seen by the load generator.
type Outcome struct {
	Index      int // item index in Items
	Sent       time.Time
	Latency    time.Duration
	Label      int
	Correct    bool
	Gear       string
	AnsweredBy string
	Degraded   bool
	Code       wire.Code // empty on success
	Warmup     bool
}

// Snapshot is the state of a run so far.
type Snapshot struct {
	Elapsed     time.Duration
	OfferedQPS  float64 // schedule's current rate (open loop) or measured send rate
	ServedQPS   float64 // answers per second over the last tick
	Sent        int
	Answered    int
	Errors      int
	Correct     int
	LastGear    string
	P50, P95    time.Duration // over answers in the last tick window
	ErrorCounts map[wire.Code]int
}

// Report summarises a finished run.
type Report struct {
	Duration time.Duration
	Sent     int
	Answered int // results without error
	Lost     int // no result within the wait at the end
	// Duplicates counts replies for requests already answered: the
	// pipeline promises exactly one result, so this should be 0.
	Duplicates int
	Outcomes   []Outcome
}

// Accuracy is the fraction of answered requests whose label was right.
func (r Report) Accuracy() float64 {
	ok, n := 0, 0
	for _, o := range r.Outcomes {
		if o.Code == "" {
			n++
			if o.Correct {
				ok++
			}
		}
	}
	if n == 0 {
		return 0
	}
	return float64(ok) / float64(n)
}

// Throughput is answered requests per second over the run.
func (r Report) Throughput() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Answered) / r.Duration.Seconds()
}

// Percentile returns the q-quantile (0..1) of latencies of answered,
// non-warmup requests.
func (r Report) Percentile(q float64) time.Duration {
	var l []time.Duration
	for _, o := range r.Outcomes {
		if o.Code == "" && !o.Warmup {
			l = append(l, o.Latency)
		}
	}
	return percentile(l, q)
}

// ErrorCounts counts error results by code.
func (r Report) ErrorCounts() map[wire.Code]int {
	m := map[wire.Code]int{}
	for _, o := range r.Outcomes {
		if o.Code != "" {
			m[o.Code]++
		}
	}
	return m
}

// ByGear counts answered requests by the gear that answered them.
func (r Report) ByGear() map[string]int {
	m := map[string]int{}
	for _, o := range r.Outcomes {
		if o.Code == "" {
			m[o.Gear]++
		}
	}
	return m
}

func percentile(l []time.Duration, q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	slices.Sort(l)
	i := int(math.Ceil(q*float64(len(l)))) - 1
	return l[min(max(i, 0), len(l)-1)]
}

// inputTensor is values as a UINT8 tensor when scale > 0 and every value
// is a whole multiple of it in [0, 255], else as FP32.
func inputTensor(shape []int64, values []float32, scale float64) wire.Tensor {
	if scale > 0 {
		b := make([]byte, len(values))
		ok := true
		for i, v := range values {
			q := math.Round(float64(v) / scale)
			if q < 0 || q > 255 || math.Abs(float64(v)-q*scale) > 1e-6 {
				ok = false
				break
			}
			b[i] = byte(q)
		}
		if ok {
			return wire.Tensor{Datatype: wire.UINT8, Shape: shape, Data: b}
		}
	}
	return wire.FP32Tensor(shape, values)
}

type pending struct {
	indexes []int
	sent    time.Time
}

// Run sends load to the pipeline over nc until the duration or request
// budget is spent (or ctx ends), waits for outstanding replies, and reports.
func Run(ctx context.Context, nc *nats.Conn, cfg Config) (Report, error) {
	if cfg.Items == nil || cfg.Items.Len() == 0 {
		return Report{}, errors.New("loadgen: no items")
	}
	if cfg.Concurrency <= 0 && cfg.Schedule == nil {
		return Report{}, errors.New("loadgen: need a schedule or a concurrency")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Client == "" {
		cfg.Client = "loadgen"
	}
	if cfg.TickEvery <= 0 {
		cfg.TickEvery = time.Second
	}
	codec := wire.NewCodec()
	// The connection's inbox prefix: a producer user may read only its own
	// inboxes (nats.CustomInboxPrefix).
	inbox := nc.NewInbox()

	var (
		mu           sync.Mutex
		inflight     = map[string]pending{}
		outcomes     []Outcome
		window       []time.Duration
		winAns       int
		lastGear     string
		errCount     = map[wire.Code]int{}
		dups         int
		answeredKeys = map[string]bool{}
		correct      int
		answered     int
		errs         int
	)
	slots := make(chan struct{}, max(cfg.Concurrency, 1))
	start := time.Now()

	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		now := time.Now()
		var res wire.Result
		decodeErr := wire.DecodeResult(m.Data, &res)
		key := m.Subject[len(inbox)+1:]
		mu.Lock()
		p, ok := inflight[key]
		if !ok {
			if answeredKeys[key] {
				dups++
			}
			mu.Unlock()
			return
		}
		delete(inflight, key)
		answeredKeys[key] = true
		results := []wire.Result{res}
		if len(p.indexes) > 1 {
			results = res.Items
			if decodeErr == nil && res.Error == nil && len(results) != len(p.indexes) {
				decodeErr = fmt.Errorf("batch of %d answered with %d results", len(p.indexes), len(results))
			}
		}
		for k, index := range p.indexes {
			o := Outcome{Index: index, Sent: p.sent, Latency: now.Sub(p.sent), Warmup: p.sent.Sub(start) < cfg.Warmup}
			var r *wire.Result
			if k < len(results) {
				r = &results[k]
			}
			switch {
			case decodeErr != nil || r == nil && res.Error == nil:
				o.Code = wire.CodeInternal
			case res.Error != nil:
				o.Code = res.Error.Code
			case r.Error != nil:
				o.Code = r.Error.Code
			default:
				o.Label, o.Gear, o.AnsweredBy, o.Degraded = r.Label, r.Gear, r.AnsweredBy, r.Degraded
				o.Correct = int32(r.Label) == cfg.Items.Labels[index]
			}
			outcomes = append(outcomes, o)
			if o.Code != "" {
				errs++
				errCount[o.Code]++
			} else {
				answered++
				winAns++
				lastGear = o.Gear
				if o.Correct {
					correct++
				}
				if !o.Warmup {
					window = append(window, o.Latency)
				}
			}
		}
		mu.Unlock()
		if cfg.Concurrency > 0 {
			select {
			case <-slots:
			default:
			}
		}
	})
	if err != nil {
		return Report{}, fmt.Errorf("loadgen: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
	sub.SetPendingLimits(-1, -1)

	var seq atomic.Int64
	batch := max(cfg.BatchItems, 1)
	// Each item's 8-bit form, made once (a producer of images has them).
	bytesOf := make([][]byte, cfg.Items.Len())
	itemBytes := func(i int) []byte {
		if bytesOf[i] == nil {
			t := inputTensor(cfg.Items.ItemShape, cfg.Items.Item(i), cfg.UINT8Scale)
			if t.Datatype != wire.UINT8 {
				bytesOf[i] = []byte{} // not 8-bit: sent as FP32
			} else {
				bytesOf[i] = t.Data
			}
		}
		return bytesOf[i]
	}
	send := func(i int) error {
		indexes := make([]int, batch)
		for k := range indexes {
			indexes[k] = (i + k) % cfg.Items.Len()
		}
		shape := cfg.Items.ItemShape
		if batch > 1 {
			shape = append([]int64{int64(batch)}, shape...)
		}
		var input wire.Tensor
		if cfg.UINT8Scale > 0 {
			data := make([]byte, 0, len(indexes)*len(itemBytes(indexes[0])))
			for _, ix := range indexes {
				b := itemBytes(ix)
				if len(b) == 0 {
					data = nil
					break
				}
				data = append(data, b...)
			}
			if data != nil {
				input = wire.Tensor{Datatype: wire.UINT8, Shape: shape, Data: data}
			}
		}
		if input.Data == nil {
			var values []float32
			for _, ix := range indexes {
				values = append(values, cfg.Items.Item(ix)...)
			}
			input = wire.FP32Tensor(shape, values)
		}
		req := wire.Request{
			Input:               input,
			TimeoutMs:           cfg.Timeout.Milliseconds(),
			Client:              cfg.Client,
			ReturnProbabilities: cfg.ReturnProbabilities,
		}
		b, err := codec.EncodeRequest(&req)
		if err != nil {
			return err
		}
		key := fmt.Sprint(seq.Add(1))
		mu.Lock()
		inflight[key] = pending{indexes: indexes, sent: time.Now()}
		mu.Unlock()
		return nc.PublishMsg(&nats.Msg{Subject: wire.InferSubject(cfg.Pipeline), Reply: inbox + "." + key, Data: b})
	}

	rng := rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))
	ticker := time.NewTicker(cfg.TickEvery)
	defer ticker.Stop()
	lastTick, lastSent := start, 0
	sent := 0
	next := start
	deadline := start.Add(cfg.Duration)
	tick := func(now time.Time) {
		if cfg.Tick == nil {
			return
		}
		mu.Lock()
		s := Snapshot{
			Elapsed: now.Sub(start), Sent: sent, Answered: answered, Errors: errs, Correct: correct,
			LastGear: lastGear, ServedQPS: float64(winAns) / now.Sub(lastTick).Seconds(),
			P50: percentile(window, 0.5), P95: percentile(window, 0.95), ErrorCounts: maps.Clone(errCount),
		}
		window, winAns = window[:0], 0
		mu.Unlock()
		if cfg.Concurrency > 0 || cfg.Schedule == nil {
			s.OfferedQPS = float64(sent-lastSent) / now.Sub(lastTick).Seconds()
		} else {
			s.OfferedQPS = cfg.Schedule(now.Sub(start))
		}
		lastTick, lastSent = now, sent
		cfg.Tick(s)
	}

sending:
	for {
		now := time.Now()
		if ctx.Err() != nil || (cfg.Duration > 0 && now.After(deadline)) || (cfg.MaxRequests > 0 && sent >= cfg.MaxRequests) {
			break
		}
		select {
		case <-ticker.C:
			tick(now)
		default:
		}
		if cfg.Concurrency > 0 {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				break sending
			case <-time.After(50 * time.Millisecond):
				continue
			}
			if err := send(sent % cfg.Items.Len()); err != nil {
				return Report{}, fmt.Errorf("loadgen: send: %w", err)
			}
			sent += batch
			continue
		}
		// Open loop: send every arrival that is due, then sleep until the next.
		for !next.After(now) && (cfg.MaxRequests == 0 || sent < cfg.MaxRequests) {
			if err := send(sent % cfg.Items.Len()); err != nil {
				return Report{}, fmt.Errorf("loadgen: send: %w", err)
			}
			sent += batch
			rate := cfg.Schedule(next.Sub(start)) / float64(batch)
			if rate <= 0 {
				rate = 0.1
			}
			next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
		}
		if d := time.Until(next); d > 0 {
			select {
			case <-time.After(min(d, 50*time.Millisecond)):
			case <-ctx.Done():
			}
		}
	}
	sendEnd := time.Now()
	if err := nc.Flush(); err != nil {
		return Report{}, fmt.Errorf("loadgen: flush: %w", err)
	}
	// Wait for stragglers: every request has a deadline, so each should get
	// a result (possibly deadline_exceeded) within Timeout plus slack.
	waitUntil := time.Now().Add(cfg.Timeout + 2*time.Second)
	for time.Now().Before(waitUntil) {
		mu.Lock()
		n := len(inflight)
		mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ticker.C:
			tick(time.Now())
		case <-time.After(20 * time.Millisecond):
		}
	}
	tick(time.Now())
	mu.Lock()
	defer mu.Unlock()
	lost := 0
	for _, p := range inflight {
		lost += len(p.indexes)
	}
	rep := Report{Duration: sendEnd.Sub(start), Sent: sent, Answered: answered, Lost: lost, Duplicates: dups, Outcomes: slices.Clone(outcomes)}
	if answered > 0 {
		// Served throughput counts until the last answer arrived.
		last := start
		for _, o := range outcomes {
			if t := o.Sent.Add(o.Latency); t.After(last) {
				last = t
			}
		}
		rep.Duration = last.Sub(start)
	}
	return rep, nil
}
