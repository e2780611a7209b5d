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
	"strconv"
	"sync"
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

// record is an Outcome as a run keeps it until its report: without
// pointers (names as indexes into run.names, times as offsets from the
// start), so that a long run's outcomes, held in the process that also
// hosts the measured system in bench and tests, add nothing to what the
// garbage collector scans.
type record struct {
	index, label              int32
	sent, latency             time.Duration // sent: since run.start
	gear, answeredBy, code    uint16        // into run.names; 0: ""
	correct, degraded, warmup bool
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
	r := newRun(nc, cfg)
	sub, err := nc.Subscribe(r.inbox+".*", r.receive)
	if err != nil {
		return Report{}, fmt.Errorf("loadgen: subscribe: %w", err)
	}
	defer sub.Unsubscribe()
	sub.SetPendingLimits(-1, -1)

	ticker := time.NewTicker(cfg.TickEvery)
	defer ticker.Stop()
	if err := r.sendAll(ctx, ticker); err != nil {
		return Report{}, fmt.Errorf("loadgen: send: %w", err)
	}
	sendEnd := time.Now()
	if err := nc.Flush(); err != nil {
		return Report{}, fmt.Errorf("loadgen: flush: %w", err)
	}
	r.awaitStragglers(ticker)
	r.tick(time.Now())
	return r.report(sendEnd), nil
}

// run is the state of one Run. The sending goroutine owns the fields above
// mu; the reply handler and the sender share the ones below it.
type run struct {
	cfg   Config
	nc    *nats.Conn
	codec *wire.Codec
	// inbox is the connection's inbox prefix: a producer user may read only
	// its own inboxes (nats.CustomInboxPrefix). Replies come to inbox.<key>.
	inbox string
	start time.Time
	// batch is the number of items per request.
	batch int
	// slots holds a token per request in flight in a closed loop.
	slots chan struct{}
	rng   *rand.Rand
	seq   uint64
	// bytesOf caches each item's 8-bit form, made once (a producer of
	// images has them); empty: not 8-bit.
	bytesOf [][]byte
	// sent counts the items sent; lastTick and lastSent are the previous
	// snapshot's time and count.
	sent     int
	lastTick time.Time
	lastSent int

	mu       sync.Mutex
	inflight map[uint64]pending
	// answered has bit k set once request k has its result.
	answered []uint64
	outcomes []record
	// names holds the gear, model and error code names outcomes refer to,
	// names[0] = ""; nameIndex finds them.
	names     []string
	nameIndex map[string]uint16
	// window holds the latencies since the last snapshot, winAns the
	// answers.
	window                 []time.Duration
	winAns                 int
	answers, correct, errs int
	dups                   int
	lastGear               string
	errCount               map[wire.Code]int
}

func newRun(nc *nats.Conn, cfg Config) *run {
	start := time.Now()
	return &run{
		cfg:       cfg,
		nc:        nc,
		codec:     wire.NewCodec(),
		inbox:     nc.NewInbox(),
		start:     start,
		batch:     max(cfg.BatchItems, 1),
		slots:     make(chan struct{}, max(cfg.Concurrency, 1)),
		rng:       rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		bytesOf:   make([][]byte, cfg.Items.Len()),
		lastTick:  start,
		inflight:  map[uint64]pending{},
		names:     []string{""},
		nameIndex: map[string]uint16{"": 0},
		errCount:  map[wire.Code]int{},
	}
}

// receive handles one reply: it records an outcome per item of the
// request and, in a closed loop, frees the request's slot.
func (r *run) receive(m *nats.Msg) {
	now := time.Now()
	var res wire.Result
	decodeErr := wire.DecodeResult(m.Data, &res)
	key, keyErr := strconv.ParseUint(m.Subject[len(r.inbox)+1:], 10, 64)
	r.mu.Lock()
	p, ok := r.inflight[key]
	if !ok {
		if keyErr == nil && r.wasAnswered(key) {
			r.dups++
		}
		r.mu.Unlock()
		return
	}
	delete(r.inflight, key)
	r.markAnswered(key)
	for _, o := range r.outcomesOf(p, &res, decodeErr, now) {
		r.record(o)
	}
	r.mu.Unlock()
	if r.cfg.Concurrency > 0 {
		select {
		case <-r.slots:
		default:
		}
	}
}

// outcomesOf turns the result of request p into one outcome per item.
func (r *run) outcomesOf(p pending, res *wire.Result, decodeErr error, now time.Time) []Outcome {
	results := []wire.Result{*res}
	if len(p.indexes) > 1 {
		results = res.Items
		if decodeErr == nil && res.Error == nil && len(results) != len(p.indexes) {
			decodeErr = fmt.Errorf("batch of %d answered with %d results", len(p.indexes), len(results))
		}
	}
	out := make([]Outcome, 0, len(p.indexes))
	for k, index := range p.indexes {
		o := Outcome{Index: index, Sent: p.sent, Latency: now.Sub(p.sent), Warmup: p.sent.Sub(r.start) < r.cfg.Warmup}
		var item *wire.Result
		if k < len(results) {
			item = &results[k]
		}
		switch {
		case decodeErr != nil || item == nil && res.Error == nil:
			o.Code = wire.CodeInternal
		case res.Error != nil:
			o.Code = res.Error.Code
		case item.Error != nil:
			o.Code = item.Error.Code
		default:
			o.Label, o.Gear, o.AnsweredBy, o.Degraded = item.Label, item.Gear, item.AnsweredBy, item.Degraded
			o.Correct = int32(item.Label) == r.cfg.Items.Labels[index]
		}
		out = append(out, o)
	}
	return out
}

// markAnswered and wasAnswered keep request key's answered bit; r.mu is
// held.
func (r *run) markAnswered(key uint64) {
	for uint64(len(r.answered)) <= key/64 {
		r.answered = append(r.answered, 0)
	}
	r.answered[key/64] |= 1 << (key % 64)
}

func (r *run) wasAnswered(key uint64) bool {
	return key/64 < uint64(len(r.answered)) && r.answered[key/64]&(1<<(key%64)) != 0
}

// name is the index of s in r.names, added if new; r.mu is held.
func (r *run) name(s string) uint16 {
	if i, ok := r.nameIndex[s]; ok {
		return i
	}
	i := uint16(len(r.names))
	r.names = append(r.names, s)
	r.nameIndex[s] = i
	return i
}

// record counts an outcome; r.mu is held.
func (r *run) record(o Outcome) {
	r.outcomes = append(r.outcomes, record{
		index: int32(o.Index), label: int32(o.Label),
		sent: o.Sent.Sub(r.start), latency: o.Latency,
		gear: r.name(o.Gear), answeredBy: r.name(o.AnsweredBy), code: r.name(string(o.Code)),
		correct: o.Correct, degraded: o.Degraded, warmup: o.Warmup,
	})
	if o.Code != "" {
		r.errs++
		r.errCount[o.Code]++
		return
	}
	r.answers++
	r.winAns++
	r.lastGear = o.Gear
	if o.Correct {
		r.correct++
	}
	if !o.Warmup {
		r.window = append(r.window, o.Latency)
	}
}

// sendAll sends until the duration or the request budget is spent or ctx
// ends: in a closed loop whenever a slot is free, in an open loop every
// arrival that is due.
func (r *run) sendAll(ctx context.Context, ticker *time.Ticker) error {
	cfg := r.cfg
	deadline := r.start.Add(cfg.Duration)
	next := r.start
	for {
		now := time.Now()
		if ctx.Err() != nil || (cfg.Duration > 0 && now.After(deadline)) || (cfg.MaxRequests > 0 && r.sent >= cfg.MaxRequests) {
			return nil
		}
		select {
		case <-ticker.C:
			r.tick(now)
		default:
		}
		if cfg.Concurrency > 0 {
			select {
			case r.slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
				continue
			}
			if err := r.send(); err != nil {
				return err
			}
			continue
		}
		// Open loop: send every arrival that is due, then sleep until the next.
		for !next.After(now) && (cfg.MaxRequests == 0 || r.sent < cfg.MaxRequests) {
			if err := r.send(); err != nil {
				return err
			}
			rate := cfg.Schedule(next.Sub(r.start)) / float64(r.batch)
			if rate <= 0 {
				rate = 0.1
			}
			next = next.Add(time.Duration(r.rng.ExpFloat64() / rate * float64(time.Second)))
		}
		if d := time.Until(next); d > 0 {
			select {
			case <-time.After(min(d, 50*time.Millisecond)):
			case <-ctx.Done():
			}
		}
	}
}

// send sends the next request: batch items from the sent-th on, cycling.
func (r *run) send() error {
	indexes := make([]int, r.batch)
	for k := range indexes {
		indexes[k] = (r.sent%r.cfg.Items.Len() + k) % r.cfg.Items.Len()
	}
	req := wire.Request{
		Input:               r.input(indexes),
		TimeoutMs:           r.cfg.Timeout.Milliseconds(),
		Client:              r.cfg.Client,
		ReturnProbabilities: r.cfg.ReturnProbabilities,
	}
	b, err := r.codec.EncodeRequest(&req)
	if err != nil {
		return err
	}
	r.seq++
	key := r.seq
	r.mu.Lock()
	r.inflight[key] = pending{indexes: indexes, sent: time.Now()}
	r.mu.Unlock()
	if err := r.nc.PublishMsg(&nats.Msg{Subject: wire.InferSubject(r.cfg.Pipeline), Reply: r.inbox + "." + strconv.FormatUint(key, 10), Data: b}); err != nil {
		return err
	}
	r.sent += r.batch
	return nil
}

// input is the request's tensor of the items: UINT8 when UINT8Scale is set
// and every item is 8-bit, else FP32; batched when there are several.
func (r *run) input(indexes []int) wire.Tensor {
	items := r.cfg.Items
	shape := items.ItemShape
	if r.batch > 1 {
		shape = append([]int64{int64(r.batch)}, shape...)
	}
	if r.cfg.UINT8Scale > 0 {
		data := make([]byte, 0, len(indexes)*len(r.itemBytes(indexes[0])))
		for _, ix := range indexes {
			b := r.itemBytes(ix)
			if len(b) == 0 {
				data = nil
				break
			}
			data = append(data, b...)
		}
		if data != nil {
			return wire.Tensor{Datatype: wire.UINT8, Shape: shape, Data: data}
		}
	}
	var values []float32
	for _, ix := range indexes {
		values = append(values, items.Item(ix)...)
	}
	return wire.FP32Tensor(shape, values)
}

// itemBytes is item i's 8-bit form, empty when it has none.
func (r *run) itemBytes(i int) []byte {
	if r.bytesOf[i] == nil {
		t := inputTensor(r.cfg.Items.ItemShape, r.cfg.Items.Item(i), r.cfg.UINT8Scale)
		if t.Datatype != wire.UINT8 {
			r.bytesOf[i] = []byte{} // not 8-bit: sent as FP32
		} else {
			r.bytesOf[i] = t.Data
		}
	}
	return r.bytesOf[i]
}

// tick passes a snapshot to cfg.Tick and starts a new window.
func (r *run) tick(now time.Time) {
	cfg := r.cfg
	if cfg.Tick == nil {
		return
	}
	r.mu.Lock()
	s := Snapshot{
		Elapsed: now.Sub(r.start), Sent: r.sent, Answered: r.answers, Errors: r.errs, Correct: r.correct,
		LastGear: r.lastGear, ServedQPS: float64(r.winAns) / now.Sub(r.lastTick).Seconds(),
		P50: percentile(r.window, 0.5), P95: percentile(r.window, 0.95), ErrorCounts: maps.Clone(r.errCount),
	}
	r.window, r.winAns = r.window[:0], 0
	r.mu.Unlock()
	if cfg.Concurrency > 0 || cfg.Schedule == nil {
		s.OfferedQPS = float64(r.sent-r.lastSent) / now.Sub(r.lastTick).Seconds()
	} else {
		s.OfferedQPS = cfg.Schedule(now.Sub(r.start))
	}
	r.lastTick, r.lastSent = now, r.sent
	cfg.Tick(s)
}

// awaitStragglers waits for the replies still outstanding: every request
// has a deadline, so each should get a result (possibly
// deadline_exceeded) within Timeout plus slack.
func (r *run) awaitStragglers(ticker *time.Ticker) {
	waitUntil := time.Now().Add(r.cfg.Timeout + 2*time.Second)
	for time.Now().Before(waitUntil) {
		r.mu.Lock()
		n := len(r.inflight)
		r.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ticker.C:
			r.tick(time.Now())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// report summarises the run; sending stopped at sendEnd.
func (r *run) report(sendEnd time.Time) Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	lost := 0
	for _, p := range r.inflight {
		lost += len(p.indexes)
	}
	rep := Report{Duration: sendEnd.Sub(r.start), Sent: r.sent, Answered: r.answers, Lost: lost, Duplicates: r.dups, Outcomes: make([]Outcome, len(r.outcomes))}
	for i, o := range r.outcomes {
		rep.Outcomes[i] = Outcome{
			Index: int(o.index), Label: int(o.label),
			Sent: r.start.Add(o.sent), Latency: o.latency,
			Gear: r.names[o.gear], AnsweredBy: r.names[o.answeredBy], Code: wire.Code(r.names[o.code]),
			Correct: o.correct, Degraded: o.degraded, Warmup: o.warmup,
		}
	}
	if r.answers > 0 {
		// Served throughput counts until the last answer arrived.
		last := time.Duration(0)
		for _, o := range r.outcomes {
			last = max(last, o.sent+o.latency)
		}
		rep.Duration = last
	}
	return rep
}
