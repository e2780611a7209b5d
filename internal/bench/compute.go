package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// ModelSource returns the ONNX bytes of a model by name.
type ModelSource func(name string) ([]byte, error)

// ModelRunConfig configures ModelThroughput.
type ModelRunConfig struct {
	// Model names the model; ONNX is its file's bytes.
	Model string
	ONNX  []byte
	// Items are run in order, cycling, Batch at a time.
	Items *dataset.Set
	Batch int
	// Sessions is the number of goroutines, each with its own session (as
	// the worker's runners); default 2. Threads is each session's intra-op
	// thread count (default 1).
	Sessions int
	Threads  int
	// Options are the sessions' other options: the provider and its CUDA
	// options (IntraOpThreads is Threads).
	Options onnxrt.SessionOptions
	// Duration is how long to run (at least one batch per session).
	Duration time.Duration
}

// ModelRun is the in-process throughput of one model.
type ModelRun struct {
	Model       string  `json:"model"`
	Batch       int     `json:"batch"`
	Sessions    int     `json:"sessions"`
	Items       int     `json:"items"`
	Seconds     float64 `json:"seconds"`
	ItemsPerSec float64 `json:"items_per_sec"`
}

// ModelThroughput runs one model with ONNX Runtime in this process, with no
// bus, at a fixed batch size on Sessions goroutines, and reports items per
// second: the compute-only upper bound of a stage.
func ModelThroughput(ctx context.Context, rt *onnxrt.Runtime, cfg ModelRunConfig) (ModelRun, error) {
	orDefault(&cfg.Sessions, 2)
	orDefault(&cfg.Threads, 1)
	if cfg.Items == nil || cfg.Items.Len() == 0 {
		return ModelRun{}, errors.New("model throughput: no items")
	}
	if cfg.Batch < 1 || cfg.Batch > cfg.Items.Len() {
		return ModelRun{}, fmt.Errorf("model throughput: batch %d outside [1, %d items]", cfg.Batch, cfg.Items.Len())
	}
	sessions, closeAll, err := openSessions(rt, cfg.Sessions, []string{cfg.Model}, func(string) ([]byte, error) { return cfg.ONNX, nil }, cfg.Threads, cfg.Options)
	if err != nil {
		return ModelRun{}, err
	}
	defer closeAll()
	size := cfg.Items.ItemSize()
	nClasses := sessions[0][0].Info().NumClasses
	counts := make([]int, cfg.Sessions)
	elapsed, err := runTimed(ctx, cfg.Sessions, func(g int, start time.Time) error {
		s := sessions[g][0]
		out := make([]float32, cfg.Batch*nClasses)
		// Start each goroutine at a different place in the set.
		at := g * cfg.Items.Len() / cfg.Sessions
		for first := true; first || time.Since(start) < cfg.Duration; first = false {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if at+cfg.Batch > cfg.Items.Len() {
				at = 0
			}
			if _, err := s.Run(cfg.Items.Data[at*size:(at+cfg.Batch)*size], cfg.Batch, out); err != nil {
				return err
			}
			counts[g] += cfg.Batch
			at += cfg.Batch
		}
		return nil
	}, func(g int) error {
		// Warm up: the first run of a batch size allocates its tensors.
		out := make([]float32, cfg.Batch*nClasses)
		_, err := sessions[g][0].Run(cfg.Items.Data[:cfg.Batch*size], cfg.Batch, out)
		return err
	})
	if err != nil {
		return ModelRun{}, fmt.Errorf("model throughput %s: %w", cfg.Model, err)
	}
	r := ModelRun{Model: cfg.Model, Batch: cfg.Batch, Sessions: cfg.Sessions, Seconds: elapsed.Seconds()}
	for _, c := range counts {
		r.Items += c
	}
	if r.Seconds > 0 {
		r.ItemsPerSec = float64(r.Items) / r.Seconds
	}
	return r, nil
}

// CascadeRunConfig configures CascadeThroughput.
type CascadeRunConfig struct {
	// Plan and Gear (an index into Plan.Gears) give the cascade, its
	// thresholds, the models' temperatures, the confidence metric and the
	// batch sizes.
	Plan *plan.Plan
	Gear int
	// Models reads the models' bytes.
	Models ModelSource
	// Items are the requests; Items.Labels score the answers.
	Items *dataset.Set
	// Sessions is the number of goroutines, each with its own session of
	// every model of the cascade (default 2); Threads as in ModelRunConfig.
	Sessions int
	Threads  int
	// Options as in ModelRunConfig.
	Options onnxrt.SessionOptions
	// Duration: the goroutines repeat passes over their share of the items
	// until it has passed. Zero runs exactly one pass.
	Duration time.Duration
}

// CascadeRun is the in-process throughput of one gear's cascade.
type CascadeRun struct {
	Gear     string `json:"gear"`
	Cascade  string `json:"cascade"`
	Sessions int    `json:"sessions"`
	// Passes over the items were made; Items requests were answered in all.
	Passes int `json:"passes"`
	Items  int `json:"items"`
	// Reached[j] counts the requests stage j ran; AnsweredBy[j] those it
	// answered; Correct those answered with their label.
	Reached    []int   `json:"reached"`
	AnsweredBy []int   `json:"answered_by"`
	Correct    int     `json:"correct"`
	Accuracy   float64 `json:"accuracy"`
	// MeanBatch[j] is the mean batch size stage j ran.
	MeanBatch   []float64 `json:"mean_batch"`
	Seconds     float64   `json:"seconds"`
	ItemsPerSec float64   `json:"items_per_sec"`
}

// CascadeThroughput serves the items through a gear's cascade in this
// process, with no bus: every goroutine runs stage 0 on full batches of its
// share of the items, decides each item with plan.Calibrate,
// plan.Confidence and plan.Answers exactly as workers do, queues the
// uncertain ones for the next stage and runs a stage whenever a full batch
// of it is waiting (the rest at the end of each pass). It reports requests
// per second: the compute-only upper bound of the gear.
func CascadeThroughput(ctx context.Context, rt *onnxrt.Runtime, cfg CascadeRunConfig) (CascadeRun, error) {
	orDefault(&cfg.Sessions, 2)
	orDefault(&cfg.Threads, 1)
	if cfg.Plan == nil || cfg.Gear < 0 || cfg.Gear >= len(cfg.Plan.Gears) {
		return CascadeRun{}, errors.New("cascade throughput: no such gear")
	}
	if cfg.Items == nil || cfg.Items.Len() < cfg.Sessions {
		return CascadeRun{}, errors.New("cascade throughput: fewer items than sessions")
	}
	c, err := newCascade(cfg.Plan, cfg.Gear)
	if err != nil {
		return CascadeRun{}, fmt.Errorf("cascade throughput: %w", err)
	}
	sessions, closeAll, err := openSessions(rt, cfg.Sessions, c.models, cfg.Models, cfg.Threads, cfg.Options)
	if err != nil {
		return CascadeRun{}, err
	}
	defer closeAll()
	workers := make([]*cascadeWorker, cfg.Sessions)
	n := cfg.Items.Len()
	elapsed, err := runTimed(ctx, cfg.Sessions, func(w int, start time.Time) error {
		workers[w] = newCascadeWorker(c, sessions[w], cfg.Items)
		from, to := w*n/cfg.Sessions, (w+1)*n/cfg.Sessions
		for first := true; first || time.Since(start) < cfg.Duration; first = false {
			if err := workers[w].pass(ctx, from, to); err != nil {
				return err
			}
		}
		return nil
	}, func(w int) error {
		// Warm up every session at its batch size.
		size := cfg.Items.ItemSize()
		for j, s := range sessions[w] {
			b := min(c.batches[j], n)
			if _, err := s.Run(cfg.Items.Data[:b*size], b, make([]float32, b*s.Info().NumClasses)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return CascadeRun{}, fmt.Errorf("cascade throughput of gear %q: %w", c.gear.ID, err)
	}
	return c.summarise(workers, elapsed), nil
}

// cascade is a gear's cascade as CascadeThroughput runs it.
type cascade struct {
	gear   plan.Gear
	metric string
	// models, batches and temps are each stage's model, max batch and
	// temperature.
	models  []string
	batches []int
	temps   []float64
}

func newCascade(p *plan.Plan, gi int) (*cascade, error) {
	g := p.Gears[gi]
	c := &cascade{gear: g, metric: p.Confidence}
	for _, s := range g.Cascade {
		m, ok := p.Model(s.Model)
		if !ok {
			return nil, fmt.Errorf("gear %q uses unknown model %q", g.ID, s.Model)
		}
		c.models = append(c.models, s.Model)
		c.batches = append(c.batches, g.MaxBatch(s.Model))
		c.temps = append(c.temps, m.Temperature)
	}
	return c, nil
}

// cascadeWorker is one goroutine of CascadeThroughput with its sessions,
// buffers, queues and counts.
type cascadeWorker struct {
	c        *cascade
	sessions []*onnxrt.Session
	items    *dataset.Set
	size     int
	in, out  []float32
	// pending[j] holds the items waiting for stage j.
	pending                [][]int
	passes, answers, right int
	reached, answered      []int
	batches                []int
}

func newCascadeWorker(c *cascade, sessions []*onnxrt.Session, items *dataset.Set) *cascadeWorker {
	k := len(c.models)
	size := items.ItemSize()
	maxB := slices.Max(c.batches)
	return &cascadeWorker{
		c: c, sessions: sessions, items: items, size: size,
		in:      make([]float32, maxB*size),
		out:     make([]float32, maxB*sessions[0].Info().NumClasses),
		pending: make([][]int, k),
		reached: make([]int, k), answered: make([]int, k), batches: make([]int, k),
	}
}

// pass serves the items [from, to) once: stage 0 on full batches, the
// later stages whenever a full batch of theirs waits, and what is left at
// the end.
func (w *cascadeWorker) pass(ctx context.Context, from, to int) error {
	b0 := w.c.batches[0]
	items := make([]int, 0, b0)
	for at := from; at < to; at += b0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		items = items[:0]
		for i := at; i < min(at+b0, to); i++ {
			items = append(items, i)
		}
		if err := w.run(0, items); err != nil {
			return err
		}
		if err := w.drain(false); err != nil {
			return err
		}
	}
	if err := w.drain(true); err != nil {
		return err
	}
	w.passes++
	return nil
}

// run runs stage j on items and routes each to an answer or to the next
// stage's queue, deciding as the workers do.
func (w *cascadeWorker) run(j int, items []int) error {
	size, k := w.size, len(w.c.models)
	for i, item := range items {
		copy(w.in[i*size:(i+1)*size], w.items.Item(item))
	}
	probs, err := w.sessions[j].Run(w.in[:len(items)*size], len(items), w.out)
	if err != nil {
		return err
	}
	w.reached[j] += len(items)
	w.batches[j]++
	c := len(probs) / len(items)
	for i, item := range items {
		row := probs[i*c : (i+1)*c]
		plan.Calibrate(row, w.c.temps[j])
		conf, label := plan.Confidence(w.c.metric, row)
		if plan.Answers(conf, w.c.gear.Cascade[j].Threshold, j == k-1) {
			w.answered[j]++
			w.answers++
			if int32(label) == w.items.Labels[item] {
				w.right++
			}
			continue
		}
		w.pending[j+1] = append(w.pending[j+1], item)
	}
	return nil
}

// drain runs every later stage with a full batch waiting, or with anything
// waiting when all is set.
func (w *cascadeWorker) drain(all bool) error {
	for j := 1; j < len(w.c.models); j++ {
		for len(w.pending[j]) >= w.c.batches[j] || (all && len(w.pending[j]) > 0) {
			m := min(w.c.batches[j], len(w.pending[j]))
			if err := w.run(j, w.pending[j][:m]); err != nil {
				return err
			}
			w.pending[j] = append(w.pending[j][:0], w.pending[j][m:]...)
		}
	}
	return nil
}

// summarise adds up the workers' counts.
func (c *cascade) summarise(workers []*cascadeWorker, elapsed time.Duration) CascadeRun {
	k := len(c.models)
	r := CascadeRun{
		Gear: c.gear.ID, Cascade: plan.CascadeString(c.gear.Cascade), Sessions: len(workers),
		Reached: make([]int, k), AnsweredBy: make([]int, k), MeanBatch: make([]float64, k),
		Seconds: elapsed.Seconds(), Passes: workers[0].passes,
	}
	nb := make([]int, k)
	for _, t := range workers {
		r.Items += t.answers
		r.Correct += t.right
		r.Passes = min(r.Passes, t.passes)
		for j := range k {
			r.Reached[j] += t.reached[j]
			r.AnsweredBy[j] += t.answered[j]
			nb[j] += t.batches[j]
		}
	}
	for j := range k {
		if nb[j] > 0 {
			r.MeanBatch[j] = float64(r.Reached[j]) / float64(nb[j])
		}
	}
	if r.Items > 0 {
		r.Accuracy = float64(r.Correct) / float64(r.Items)
	}
	if r.Seconds > 0 {
		r.ItemsPerSec = float64(r.Items) / r.Seconds
	}
	return r
}

// openSessions opens, for each of n goroutines, one session of every model,
// with opts and threads intra-op threads. closeAll closes them all.
func openSessions(rt *onnxrt.Runtime, n int, models []string, src ModelSource, threads int, opts onnxrt.SessionOptions) (sessions [][]*onnxrt.Session, closeAll func(), err error) {
	opts.IntraOpThreads = threads
	closeAll = func() {
		for _, ss := range sessions {
			for _, s := range ss {
				s.Close()
			}
		}
	}
	bytes := make([][]byte, len(models))
	for j, m := range models {
		if bytes[j], err = src(m); err != nil {
			return nil, nil, fmt.Errorf("read model %q: %w", m, err)
		}
	}
	for range n {
		ss := make([]*onnxrt.Session, 0, len(models))
		for j, m := range models {
			s, err := rt.Open(m, bytes[j], opts)
			if err != nil {
				sessions = append(sessions, ss)
				closeAll()
				return nil, nil, err
			}
			ss = append(ss, s)
		}
		sessions = append(sessions, ss)
	}
	return sessions, closeAll, nil
}

// runTimed runs warm(g) on n goroutines, then, once all are warm, work(g,
// start) on all of them from a common start, and returns the time from
// start to the end of the last. The first error wins.
func runTimed(ctx context.Context, n int, work func(g int, start time.Time) error, warm func(g int) error) (time.Duration, error) {
	var (
		wg, ready sync.WaitGroup
		mu        sync.Mutex
		first     error
	)
	record := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	startCh := make(chan time.Time)
	ready.Add(n)
	for g := range n {
		wg.Go(func() {
			err := warm(g)
			ready.Done()
			start := <-startCh
			if err != nil {
				record(err)
				return
			}
			if err := work(g, start); err != nil {
				record(err)
			}
		})
	}
	ready.Wait()
	start := time.Now()
	for range n {
		startCh <- start
	}
	wg.Wait()
	elapsed := time.Since(start)
	if first == nil {
		first = ctx.Err()
	}
	return elapsed, first
}
