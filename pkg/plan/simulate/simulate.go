package simulate

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// ErrBadConfig marks a simulator configuration that cannot run.
var ErrBadConfig = errors.New("bad simulation config")

// Stage is one stage of a simulated cascade.
type Stage struct {
	Model string
	// Profile gives the service time of a batch: Profile.LatencyMs(size).
	Profile plan.Profile
	// Runners is how many runners serve this model (>= 1): with
	// Config.SharedRunners its weight in the shared pool (runners pick
	// the model with the most queued items per weight), otherwise a pool
	// of its own.
	Runners int
	// MaxBatch and MaxDelayMs are the fetch settings (see Simulate).
	MaxBatch   int
	MaxDelayMs float64
	// MaxQueue bounds the items waiting in the stage's stream; an item that
	// finds it full is dropped (the live system answers `overloaded`).
	// 0 means unbounded.
	MaxQueue int
}

// Config configures one simulation run.
type Config struct {
	// QPS is the mean rate of the Poisson arrivals (requests/s).
	QPS float64
	// Requests is how many requests arrive (default 3000).
	Requests int
	// Seed makes the run deterministic: arrivals and escalations depend on
	// it alone, so two configs run with one seed see the same requests.
	Seed uint64
	// Overheads are the costs the simulator charges outside the models'
	// batch latency: per hop, per item and per batch of runner time, the
	// co-located processes' share of the cores, and the latency floor.
	plan.Overheads
	// SharedRunners puts every stage's runners in one pool whose runners
	// serve any stage, as one stage worker hosting every model of the
	// cascade does (`cascadeserve up`, one worker per machine). Otherwise
	// each stage has a pool of its own: workers deployed per model.
	SharedRunners bool
	Stages        []Stage
	// AnsweredBy[j] is the probability that stage j answers a request (the
	// replay's answered-by distribution; the last stage takes the rest).
	// Drawing the answering stage from it is, in law, drawing a replay item
	// uniformly and replaying its escalation decisions.
	AnsweredBy []float64
	// WarmupFraction of the first requests is left out of the latency
	// statistics (default 0.1; negative means none).
	WarmupFraction float64
	// AbortAboveP95Ms, when > 0, stops the run as soon as more than 5% of
	// the measured requests are known to take longer: the p95 misses it.
	// The planner uses it to reject overloaded configurations quickly.
	AbortAboveP95Ms float64
}

// StageResult is what one stage did in a simulation.
type StageResult struct {
	Model   string `json:"model"`
	Runners int    `json:"runners"`
	Items   int    `json:"items"`
	Batches int    `json:"batches"`
	// MeanBatch is Items/Batches.
	MeanBatch float64 `json:"mean_batch"`
	// Utilisation is the stage's busy time while measured requests arrive
	// (from the first measured arrival to the last arrival) over its pool's
	// runners × that window: the load the stage carries in steady state,
	// without the empty start and the drain at the end. With shared runners
	// it is the stage's part of the pool's utilisation.
	Utilisation float64 `json:"utilisation"`
	// MeanWaitMs is the mean time from an item's arrival at the stage to the
	// start of the batch it runs in.
	MeanWaitMs float64 `json:"mean_wait_ms"`
	// MaxQueue is the most items that waited in the stream at once.
	MaxQueue int `json:"max_queue"`
	Dropped  int `json:"dropped"`
	// Answered counts the measured requests this stage answered, and
	// AnsweredP50Ms and AnsweredP95Ms are their end-to-end latency
	// percentiles: where in the cascade the time goes.
	Answered      int     `json:"answered"`
	AnsweredP50Ms float64 `json:"answered_p50_ms"`
	AnsweredP95Ms float64 `json:"answered_p95_ms"`
}

// Result summarises a simulation run. Latencies are end to end, from
// arrival at ingress to the result, over the measured (post-warmup)
// requests that completed.
type Result struct {
	Requests  int `json:"requests"`
	Completed int `json:"completed"`
	Dropped   int `json:"dropped"`
	Measured  int `json:"measured"`
	// Aborted is set when AbortAboveP95Ms stopped the run; the statistics
	// then cover the requests finished so far.
	Aborted bool `json:"aborted,omitempty"`
	// SharedRunners is Config.SharedRunners.
	SharedRunners bool    `json:"shared_runners,omitempty"`
	P50Ms         float64 `json:"p50_ms"`
	P95Ms         float64 `json:"p95_ms"`
	P99Ms         float64 `json:"p99_ms"`
	MeanMs        float64 `json:"mean_ms"`
	MaxMs         float64 `json:"max_ms"`
	// ThroughputQPS is completed requests over DurationMs.
	ThroughputQPS float64 `json:"throughput_qps"`
	// DurationMs runs from the first arrival to the last completion.
	DurationMs float64       `json:"duration_ms"`
	Stages     []StageResult `json:"stages"`
	// Busy is Config.Busy, and FloorMs and FloorP95Ms the latency floor
	// charged at it (plan.Overheads.LatencyFloorAt).
	Busy       float64 `json:"busy"`
	FloorMs    float64 `json:"floor_ms"`
	FloorP95Ms float64 `json:"floor_p95_ms"`
}

// MaxUtilisation returns the highest utilisation of a runner pool: the
// sum of the stages' with shared runners, the highest stage's otherwise.
func (r Result) MaxUtilisation() float64 {
	u, sum := 0.0, 0.0
	for _, s := range r.Stages {
		u = max(u, s.Utilisation)
		sum += s.Utilisation
	}
	if r.SharedRunners {
		return sum
	}
	return u
}

// Validate reports every problem of the config, joined, wrapped in
// ErrBadConfig.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !(c.QPS > 0) || math.IsInf(c.QPS, 0) {
		bad("qps must be > 0, got %v", c.QPS)
	}
	if c.Requests < 0 {
		bad("requests must be >= 0")
	}
	errs = append(errs, c.Overheads.Validate())
	if rho := c.requestShare(); rho >= 1 {
		bad("the request overhead at %v qps (%.4g ms of CPU per second) needs %.3g of the %d runners' cores, more than all of them", c.QPS, c.OverheadCPUMsPerS(c.QPS), rho, c.totalRunners())
	}
	if len(c.Stages) == 0 {
		bad("no stages")
	}
	if len(c.AnsweredBy) != len(c.Stages) {
		bad("answered-by has %d entries for %d stages", len(c.AnsweredBy), len(c.Stages))
	}
	for _, p := range c.AnsweredBy {
		if p < 0 || math.IsNaN(p) {
			bad("answered-by fractions must be >= 0")
			break
		}
	}
	for j, s := range c.Stages {
		if s.Runners < 1 {
			bad("stage %d (%s): runners must be >= 1, got %d", j, s.Model, s.Runners)
		}
		if s.MaxBatch < 1 {
			bad("stage %d (%s): max batch must be >= 1, got %d", j, s.Model, s.MaxBatch)
		}
		if s.MaxDelayMs < 0 {
			bad("stage %d (%s): max delay must be >= 0", j, s.Model)
		}
		if err := s.Profile.Validate(); err != nil {
			bad("stage %d (%s): profile: %w", j, s.Model, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	return nil
}

// totalRunners is the number of runners of all stages.
func (c Config) totalRunners() int {
	n := 0
	for _, s := range c.Stages {
		n += s.Runners
	}
	return n
}

// floorSigma is the log-normal σ of a latency floor with this median and
// p95 (0: constant).
func floorSigma(median, p95 float64) float64 {
	if median <= 0 || p95 <= median {
		return 0
	}
	return math.Log(p95/median) / 1.6448536269514722
}

// Busy is the share of the cores (one per runner) that the config keeps
// busy: the overhead's CPU at its load (ρ) plus the models' compute, every
// stage's items at its max batch's cost per item. It places the config on
// the latency floor's curve (plan.Overheads.LatencyFloorAt).
func (c Config) Busy() float64 {
	n := c.totalRunners()
	if n < 1 {
		return 0
	}
	total := 0.0
	for _, p := range c.AnsweredBy {
		total += p
	}
	computeMsPerS, reach := 0.0, 1.0
	for j, st := range c.Stages {
		computeMsPerS += c.QPS * reach * st.Profile.ItemCostMs(st.MaxBatch)
		if j < len(c.AnsweredBy) && total > 0 {
			reach = max(reach-c.AnsweredBy[j]/total, 0)
		}
	}
	return c.requestShare() + computeMsPerS/1000/float64(n)
}

// requestShare is ρ, the share of the runners' cores that the per-request
// overhead takes at the config's load (0 without runners).
func (c Config) requestShare() float64 {
	n := c.totalRunners()
	if n < 1 {
		return 0
	}
	return c.OverheadCPUMsPerS(c.QPS) / 1000 / float64(n)
}

// Simulate runs a discrete-event simulation of the pipeline and returns its
// latency, throughput and per-stage utilisation. It is deterministic given
// the config.
//
// Requests arrive as a Poisson process. Every stage has a stream (FIFO
// queue); runners, in pools (one shared by every stage with SharedRunners,
// one per stage otherwise), serve them as the stage worker's runners do:
//
//   - An idle runner has a pull for one item open on every stream of its
//     pool. The first item to arrive wakes it: the runner then fills a
//     batch of that stage, fetching up to MaxBatch items for MaxDelayMs
//     from that item's arrival, and runs the batch when it is full or the
//     time is up. A MaxDelayMs of 0 runs at once what arrived together.
//   - A runner that finishes a batch picks the stage of its pool with the
//     most queued items per weight (the stage's Runners; ties to the later
//     stage), takes up to MaxBatch of them and, unless that fills the
//     batch, waits up to MaxDelayMs for more; with nothing queued it goes
//     idle.
//   - As on the NATS server, pending pulls are served in the order they
//     were issued: an arriving item goes to the idle runner or filling
//     batch of its stage whose pull is oldest.
//
// A batch of n items takes Profile.LatencyMs(n) divided by 1−ρ when the
// request overhead takes a share ρ of the cores, plus ItemOverheadMs per
// item and BatchOverheadMs: the runner's wait on the NATS path is not
// stretched again, because the CPU that moving messages costs (the
// runner's and nats-server's) is part of the overhead measured as ρ;
// afterwards each item is answered or escalated to the next stage, one hop
// later.
func Run(cfg Config) (Result, error) {
	if cfg.Requests == 0 {
		cfg.Requests = 3000
	}
	if cfg.WarmupFraction == 0 {
		cfg.WarmupFraction = 0.1
	}
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	s := newSim(cfg)
	s.run()
	return s.result(), nil
}

const (
	evArrival  = iota // a request reaches ingress
	evStage           // a group of items reaches a stage's stream
	evDeadline        // a filling batch's max delay has passed
	evDone            // a runner finished its batch
)

type simEvent struct {
	t     float64
	seq   uint64
	kind  uint8
	stage int32
	// runner (evDeadline, evDone) or group id (evStage).
	ref int32
	gen uint32
}

// Runner states.
const (
	runnerIdle    = iota // pulls open on every stream of its pool
	runnerFilling        // holding a batch of one stage, waiting for more
	runnerBusy           // running a batch
)

type simRunner struct {
	pool  int
	state uint8
	stage int
	// issued is when the runner's open pull (idle or filling) was issued:
	// pulls are served oldest first.
	issued   float64
	deadline float64
	gen      uint32
	items    []int32
}

// simPool is a set of runners and the stages they serve.
type simPool struct {
	runners []int32
	stages  []int
	size    int
	// idle lists the idle runners in the order their pulls were issued
	// (they go idle in time order), oldest first.
	idle []int32
}

type simStageState struct {
	cfg  Stage
	pool int
	// filling lists the runners filling a batch of this stage in the order
	// their pulls were issued, oldest first.
	filling []int32
	queue   []int32
	qhead   int
	// statistics
	busyMs   float64 // busy time inside the measurement window
	items    int
	batches  int
	waitMs   float64
	maxQueue int
	dropped  int
}

type sim struct {
	cfg       Config
	events    []simEvent
	seq       uint64
	stages    []simStageState
	runners   []simRunner
	pools     []simPool
	arrival   []float64 // per request: ingress time
	stageAt   []float64 // per request: arrival at its current stage
	exit      []int8    // per request: answering stage
	latency   []float64 // measured latencies
	byStage   [][]float64
	groups    [][]int32
	freeGroup []int32
	next      int // next request to arrive
	warmup    int
	completed int
	dropped   int
	over      int
	aborted   bool
	firstT    float64
	lastT     float64
	// winStart and winEnd bound the utilisation window.
	winStart, winEnd float64
	cum              []float64 // cumulative answered-by
	// slowdown stretches every batch's compute time: 1/(1−ρ).
	slowdown float64
	// floor draws each request's latency floor: log-normal with median
	// floorMedian and σ floorSigma.
	floor                 *rand.Rand
	floorMedian, floorP95 float64
	floorSigma            float64
	busy                  float64
}

func newSim(cfg Config) *sim {
	s := &sim{
		cfg:      cfg,
		arrival:  make([]float64, cfg.Requests),
		stageAt:  make([]float64, cfg.Requests),
		exit:     make([]int8, cfg.Requests),
		latency:  make([]float64, 0, cfg.Requests),
		byStage:  make([][]float64, len(cfg.Stages)),
		slowdown: 1 / (1 - cfg.requestShare()),
		// A stream of its own, so that a floor leaves arrivals and
		// escalations as they were.
		floor: rand.New(rand.NewPCG(cfg.Seed, 3)),
	}
	s.busy = cfg.Busy()
	s.floorMedian, s.floorP95 = cfg.LatencyFloorAt(s.busy, cfg.totalRunners())
	s.floorSigma = floorSigma(s.floorMedian, s.floorP95)
	if cfg.WarmupFraction > 0 {
		s.warmup = int(cfg.WarmupFraction * float64(cfg.Requests))
	}
	total := 0.0
	for _, p := range cfg.AnsweredBy {
		total += p
	}
	acc := 0.0
	for j, p := range cfg.AnsweredBy {
		acc += p
		if j == len(cfg.AnsweredBy)-1 || total <= 0 {
			s.cum = append(s.cum, math.Inf(1))
		} else {
			s.cum = append(s.cum, acc/total)
		}
	}
	for j, st := range cfg.Stages {
		pool := j
		if cfg.SharedRunners {
			pool = 0
		}
		if pool == len(s.pools) {
			s.pools = append(s.pools, simPool{})
		}
		pl := &s.pools[pool]
		pl.stages = append(pl.stages, j)
		pl.size += st.Runners
		for range st.Runners {
			r := int32(len(s.runners))
			pl.runners = append(pl.runners, r)
			pl.idle = append(pl.idle, r)
			s.runners = append(s.runners, simRunner{pool: pool, items: make([]int32, 0, st.MaxBatch)})
		}
		s.stages = append(s.stages, simStageState{cfg: st, pool: pool})
	}
	return s
}

func (s *sim) push(e simEvent) {
	s.seq++
	e.seq = s.seq
	s.events = append(s.events, e)
	h := s.events
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].before(&h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (a *simEvent) before(b *simEvent) bool {
	if a.t != b.t {
		return a.t < b.t
	}
	return a.seq < b.seq
}

func (s *sim) pop() simEvent {
	h := s.events
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	i := 0
	for {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		m := l
		if r := l + 1; r < len(h) && h[r].before(&h[l]) {
			m = r
		}
		if !h[m].before(&h[i]) {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	s.events = h
	return top
}

func (s *sim) run() {
	if s.cfg.Requests == 0 {
		return
	}
	// Each stream has its own generator so that a config change in one part
	// (for example the batching) does not shift arrivals or escalations.
	arrivals := rand.New(rand.NewPCG(s.cfg.Seed, 1))
	exits := rand.New(rand.NewPCG(s.cfg.Seed, 2))
	for i := range s.exit {
		u := exits.Float64()
		j := 0
		for u >= s.cum[j] {
			j++
		}
		s.exit[i] = int8(j)
	}
	ratePerMs := s.cfg.QPS / 1000
	t := 0.0
	for i := range s.arrival {
		t += arrivals.ExpFloat64() / ratePerMs
		s.arrival[i] = t
	}
	s.firstT = s.arrival[0]
	s.winStart, s.winEnd = s.arrival[min(s.warmup, len(s.arrival)-1)], s.arrival[len(s.arrival)-1]
	if s.winEnd <= s.winStart {
		s.winStart, s.winEnd = s.arrival[0], math.Inf(1)
	}
	s.push(simEvent{t: s.arrival[0], kind: evArrival})
	hop := s.cfg.HopOverheadMs
	for len(s.events) > 0 && !s.aborted {
		e := s.pop()
		switch e.kind {
		case evArrival:
			i := int32(s.next)
			s.next++
			if s.next < len(s.arrival) {
				s.push(simEvent{t: s.arrival[s.next], kind: evArrival})
			}
			g := s.group()
			s.groups[g] = append(s.groups[g], i)
			s.push(simEvent{t: e.t + hop, kind: evStage, stage: 0, ref: g})
		case evStage:
			items := s.groups[e.ref]
			for _, i := range items {
				s.stageAt[i] = e.t
			}
			s.deliver(int(e.stage), e.t, items)
			s.groups[e.ref] = items[:0]
			s.freeGroup = append(s.freeGroup, e.ref)
		case evDeadline:
			r := &s.runners[e.ref]
			if r.state == runnerFilling && r.gen == e.gen {
				s.start(e.ref, e.t)
			}
		case evDone:
			s.done(e.ref, e.t)
		}
	}
}

// group returns a free item group.
func (s *sim) group() int32 {
	if n := len(s.freeGroup); n > 0 {
		g := s.freeGroup[n-1]
		s.freeGroup = s.freeGroup[:n-1]
		return g
	}
	s.groups = append(s.groups, nil)
	return int32(len(s.groups) - 1)
}

// deliver hands items arriving together at stage j to the pulls open on
// its stream, oldest first (idle runners of its pool and batches of j
// being filled), and queues what they do not take.
func (s *sim) deliver(j int, t float64, items []int32) {
	st := &s.stages[j]
	B := st.cfg.MaxBatch
	pl := &s.pools[st.pool]
	for len(items) > 0 {
		// The oldest pull of each kind is the head of its list; of the two
		// the older wins, the lower runner on a tie.
		best, fromIdle := int32(-1), false
		if len(st.filling) > 0 {
			best = st.filling[0]
		}
		if len(pl.idle) > 0 {
			r := pl.idle[0]
			if best < 0 || s.runners[r].issued < s.runners[best].issued ||
				(s.runners[r].issued == s.runners[best].issued && r < best) {
				best, fromIdle = r, true
			}
		}
		if best < 0 {
			for _, i := range items {
				if st.cfg.MaxQueue > 0 && len(st.queue)-st.qhead >= st.cfg.MaxQueue {
					st.dropped++
					s.dropped++
					continue
				}
				st.queue = append(st.queue, i)
			}
			st.maxQueue = max(st.maxQueue, len(st.queue)-st.qhead)
			return
		}
		run := &s.runners[best]
		if fromIdle {
			// The item wakes the runner, which fills a batch of stage j
			// for MaxDelay from now.
			pl.idle = pl.idle[1:]
			s.fill(best, j, t)
		}
		take := min(B-len(run.items), len(items))
		run.items = append(run.items, items[:take]...)
		items = items[take:]
		if len(run.items) == B || run.deadline <= t {
			s.start(best, t)
		}
	}
}

// fill makes runner r fill a batch of stage j from time t: its pull is
// issued at t and runs until t + MaxDelay.
func (s *sim) fill(r int32, j int, t float64) {
	run := &s.runners[r]
	run.state, run.stage, run.issued = runnerFilling, j, t
	s.stages[j].filling = append(s.stages[j].filling, r)
	run.deadline = t + s.stages[j].cfg.MaxDelayMs
	run.gen++
	if run.deadline > t {
		s.push(simEvent{t: run.deadline, kind: evDeadline, stage: int32(j), ref: r, gen: run.gen})
	}
}

// start runs runner r's items as one batch.
func (s *sim) start(r int32, t float64) {
	run := &s.runners[r]
	j := run.stage
	st := &s.stages[j]
	if run.state == runnerFilling {
		// Usually the head: batches start in the order they began filling.
		if k := slices.Index(st.filling, r); k >= 0 {
			st.filling = slices.Delete(st.filling, k, k+1)
		}
	}
	run.state = runnerBusy
	run.gen++
	n := len(run.items)
	service := st.cfg.Profile.LatencyMs(n)*s.slowdown + float64(n)*s.cfg.ItemOverheadMs + s.cfg.BatchOverheadMs
	st.busyMs += max(0, min(t+service, s.winEnd)-max(t, s.winStart))
	st.items += n
	st.batches++
	for _, i := range run.items {
		st.waitMs += t - s.stageAt[i]
	}
	s.push(simEvent{t: t + service, kind: evDone, stage: int32(j), ref: r})
}

// done finishes runner r's batch: every item is answered or escalated, and
// the runner takes its next batch.
func (s *sim) done(r int32, t float64) {
	run := &s.runners[r]
	j := run.stage
	hop := s.cfg.HopOverheadMs
	g := int32(-1)
	for _, i := range run.items {
		if int(s.exit[i]) <= j || j == len(s.stages)-1 {
			s.finish(i, t+hop)
			continue
		}
		if g < 0 {
			g = s.group()
		}
		s.groups[g] = append(s.groups[g], i)
	}
	if g >= 0 {
		s.push(simEvent{t: t + hop, kind: evStage, stage: int32(j + 1), ref: g})
	}
	run.items = run.items[:0]
	s.nextBatch(r, t)
}

// nextBatch gives runner r, free at t, its next batch: queued items of the
// stage with the most per weight, else nothing (idle).
func (s *sim) nextBatch(r int32, t float64) {
	run := &s.runners[r]
	best, bestPrio := -1, 0.0
	for _, j := range s.pools[run.pool].stages {
		st := &s.stages[j]
		if q := len(st.queue) - st.qhead; q > 0 {
			if prio := float64(q) / float64(st.cfg.Runners); prio >= bestPrio {
				best, bestPrio = j, prio
			}
		}
	}
	if best < 0 {
		run.state, run.issued = runnerIdle, t
		s.pools[run.pool].idle = append(s.pools[run.pool].idle, r)
		return
	}
	st := &s.stages[best]
	B := st.cfg.MaxBatch
	take := min(B, len(st.queue)-st.qhead)
	run.items = append(run.items, st.queue[st.qhead:st.qhead+take]...)
	st.qhead += take
	if st.qhead == len(st.queue) {
		st.queue, st.qhead = st.queue[:0], 0
	} else if st.qhead > 1024 && st.qhead*2 > len(st.queue) {
		st.queue = append(st.queue[:0], st.queue[st.qhead:]...)
		st.qhead = 0
	}
	s.fill(r, best, t)
	if take == B || run.deadline <= t {
		s.start(r, t)
	}
}

// floorMs draws one request's latency floor.
func (s *sim) floorMs() float64 {
	if s.floorSigma == 0 {
		return s.floorMedian
	}
	return s.floorMedian * math.Exp(s.floorSigma*s.floor.NormFloat64())
}

// finish records request i as completed at time t.
func (s *sim) finish(i int32, t float64) {
	s.completed++
	s.lastT = max(s.lastT, t)
	if int(i) < s.warmup {
		return
	}
	lat := t - s.arrival[i] + s.floorMs()
	s.latency = append(s.latency, lat)
	j := min(int(s.exit[i]), len(s.stages)-1)
	s.byStage[j] = append(s.byStage[j], lat)
	if s.cfg.AbortAboveP95Ms > 0 && lat > s.cfg.AbortAboveP95Ms {
		s.over++
		if float64(s.over) > 0.05*float64(s.cfg.Requests-s.warmup) {
			s.aborted = true
		}
	}
}

func (s *sim) result() Result {
	res := Result{
		Requests:  s.cfg.Requests,
		Completed: s.completed,
		Dropped:   s.dropped,
		Measured:  len(s.latency),
		Aborted:   s.aborted,
		Busy:      s.busy, FloorMs: s.floorMedian, FloorP95Ms: s.floorP95,

		SharedRunners: s.cfg.SharedRunners,
	}
	dur := max(s.lastT-s.firstT, 0)
	res.DurationMs = dur
	if dur > 0 {
		res.ThroughputQPS = float64(s.completed) / dur * 1000
	}
	if n := len(s.latency); n > 0 {
		lat := s.latency
		slices.Sort(lat)
		sum := 0.0
		for _, v := range lat {
			sum += v
		}
		res.MeanMs = sum / float64(n)
		res.P50Ms = percentile(lat, 0.50)
		res.P95Ms = percentile(lat, 0.95)
		res.P99Ms = percentile(lat, 0.99)
		res.MaxMs = lat[n-1]
	}
	for _, st := range s.stages {
		sr := StageResult{
			Model:    st.cfg.Model,
			Runners:  st.cfg.Runners,
			Items:    st.items,
			Batches:  st.batches,
			MaxQueue: st.maxQueue,
			Dropped:  st.dropped,
		}
		if st.batches > 0 {
			sr.MeanBatch = float64(st.items) / float64(st.batches)
		}
		if st.items > 0 {
			sr.MeanWaitMs = st.waitMs / float64(st.items)
		}
		if lat := s.byStage[len(res.Stages)]; len(lat) > 0 {
			slices.Sort(lat)
			sr.Answered = len(lat)
			sr.AnsweredP50Ms = percentile(lat, 0.5)
			sr.AnsweredP95Ms = percentile(lat, 0.95)
		}
		win := min(s.winEnd, s.lastT) - s.winStart
		if win > 0 {
			sr.Utilisation = st.busyMs / (float64(s.pools[st.pool].size) * win)
		}
		res.Stages = append(res.Stages, sr)
	}
	return res
}

// percentile returns the nearest-rank q-quantile of sorted values.
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	k := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(k, 0), len(sorted)-1)]
}
