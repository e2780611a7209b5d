package planner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// Threshold grid spacings.
const (
	// GridQuantile places thresholds on quantiles of the model's confidence
	// over the replay, so that the grid points send fixed fractions of items
	// on: e_k = (k/(G+1))², k = 1..G, of the items are escalated. The square
	// puts half of the points where less than a quarter of the items is
	// escalated — where a cheap model's few uncertain items hide most of its
	// errors and accuracy changes fastest per unit of cost. The default.
	GridQuantile = "quantile"
	// GridUniform places thresholds evenly on (0,1): k/(G+1), k = 1..G.
	GridUniform = "uniform"
)

// ErrSearchTooLarge marks a candidate search that would evaluate more
// cascades than SearchOptions.MaxCandidates allows.
var ErrSearchTooLarge = errors.New("cascade search too large")

// SearchOptions configure the candidate search.
type SearchOptions struct {
	// GridPoints is the number of thresholds tried per non-last stage
	// (default 21).
	GridPoints int
	// GridSpacing is GridQuantile (default) or GridUniform.
	GridSpacing string
	// MaxStages bounds the cascade length (0: the whole ladder).
	MaxStages int
	// MaxCandidates bounds how many cascades may be evaluated (default
	// 20 million); a larger search fails with ErrSearchTooLarge before it
	// starts.
	MaxCandidates int
}

func (o SearchOptions) withDefaults() SearchOptions {
	if o.GridPoints == 0 {
		o.GridPoints = 21
	}
	if o.GridSpacing == "" {
		o.GridSpacing = GridQuantile
	}
	if o.MaxCandidates == 0 {
		o.MaxCandidates = 20_000_000
	}
	return o
}

// Candidate is one cascade of the search with its replay evaluation.
type Candidate struct {
	Stages []plan.Stage `json:"stages"`
	Evaluation
}

// String writes the cascade compactly.
func (c Candidate) String() string { return plan.CascadeString(c.Stages) }

// Thresholds returns the threshold grid for a model, ascending and without
// duplicates.
func (e *Evaluator) Thresholds(model string, opts SearchOptions) ([]float64, error) {
	opts = opts.withDefaults()
	m, ok := e.index[model]
	if !ok {
		return nil, fmt.Errorf("%w: model %q is not in the ladder %v", ErrBadCascade, model, e.ladder)
	}
	if opts.GridPoints < 1 {
		return nil, fmt.Errorf("grid points must be >= 1, got %d", opts.GridPoints)
	}
	g := opts.GridPoints
	out := make([]float64, 0, g)
	switch opts.GridSpacing {
	case GridQuantile:
		sorted := slices.Clone(e.conf[m])
		slices.Sort(sorted)
		for k := 1; k <= g; k++ {
			f := float64(k) / float64(g+1)
			esc := f * f
			// The threshold is the confidence of the first item that is
			// answered: items strictly below it are escalated.
			pos := min(int(math.Round(esc*float64(e.n))), e.n-1)
			out = append(out, sorted[pos])
		}
	case GridUniform:
		for k := 1; k <= g; k++ {
			out = append(out, float64(k)/float64(g+1))
		}
	default:
		return nil, fmt.Errorf("grid spacing %q is not %q or %q", opts.GridSpacing, GridQuantile, GridUniform)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// searchNode is a prefix of a cascade: a non-last stage with its threshold,
// linked to the prefix before it.
type searchNode struct {
	parent    int32
	model     int32
	threshold float64
}

// searchRecord is one evaluated cascade: its prefix node (or -1) and last
// model, with its integer correct count and summed cost.
type searchRecord struct {
	node    int32
	last    int32
	stages  int32
	correct int32
	cost    float64 // Σ reached_j × cost_j (not yet divided by n)
}

// ParetoFront evaluates every cascade of the ladder (see Search) and
// returns the accuracy-versus-cost Pareto front, most accurate first, and
// how many cascades were evaluated.
func (e *Evaluator) ParetoFront(ctx context.Context, opts SearchOptions) ([]Candidate, int, error) {
	sr, err := e.Search(ctx, opts)
	if err != nil {
		return nil, 0, err
	}
	front, err := sr.Front(0)
	if err != nil {
		return nil, 0, err
	}
	return front, sr.Evaluated(), nil
}

// SearchResult holds every cascade a search evaluated, compactly, so that
// fronts under different stage limits can be taken from one search.
type SearchResult struct {
	e         *Evaluator
	maxStages int
	nodes     []searchNode
	records   []searchRecord
}

// Evaluated returns how many cascades the search evaluated.
func (sr *SearchResult) Evaluated() int { return len(sr.records) }

// Search evaluates every cascade of the ladder: every ordered subset (in
// ladder order) of up to MaxStages models, with every grid threshold at
// every non-last stage.
//
// It walks prefixes depth first. At each prefix it sorts the items that
// reach the next model by that model's confidence; every threshold then
// splits them at one position, the answered part's correct count is a prefix
// sum, and the escalated part is a prefix of the sorted items that becomes
// the next prefix's reach set. Thresholds that split identically are
// evaluated once; a threshold that escalates nothing is the shorter cascade
// (its later stages would be dead), and one that answers nothing is
// dominated by the cascade without that stage: both are skipped.
func (e *Evaluator) Search(ctx context.Context, opts SearchOptions) (*SearchResult, error) {
	opts = opts.withDefaults()
	L := len(e.ladder)
	maxStages := opts.MaxStages
	if maxStages <= 0 || maxStages > L {
		maxStages = L
	}
	grids := make([][]float64, L)
	for m, name := range e.ladder {
		g, err := e.Thresholds(name, opts)
		if err != nil {
			return nil, err
		}
		grids[m] = g
	}
	if est := estimateCandidates(L, maxStages, opts.GridPoints); est > float64(opts.MaxCandidates) {
		return nil, fmt.Errorf("%w: about %.3g cascades for %d models, %d stages and %d thresholds (limit %d); lower the grid or the number of stages",
			ErrSearchTooLarge, est, L, maxStages, opts.GridPoints, opts.MaxCandidates)
	}

	// order[m] lists items by model m's confidence ascending; rank is the
	// inverse permutation (ties broken by item index).
	order := make([][]int32, L)
	rank := make([][]int32, L)
	for m := range L {
		o := make([]int32, e.n)
		for i := range o {
			o[i] = int32(i)
		}
		conf := e.conf[m]
		slices.SortFunc(o, func(a, b int32) int {
			if c := cmp.Compare(conf[a], conf[b]); c != 0 {
				return c
			}
			return cmp.Compare(a, b)
		})
		r := make([]int32, e.n)
		for pos, i := range o {
			r[i] = int32(pos)
		}
		order[m], rank[m] = o, r
	}

	s := &searcher{
		e: e, ctx: ctx, grids: grids, order: order, rank: rank, maxStages: maxStages,
		bufs:   make([][]int32, maxStages),
		prefix: make([][]int32, maxStages),
		mark:   make([]uint32, e.n),
	}
	for d := range s.bufs {
		s.bufs[d] = make([]int32, e.n)
		s.prefix[d] = make([]int32, e.n+1)
	}
	all := make([]int32, e.n)
	for i := range all {
		all[i] = int32(i)
	}
	if err := s.expand(0, -1, -1, all, 0, 0); err != nil {
		return nil, err
	}
	return &SearchResult{e: e, maxStages: maxStages, nodes: s.nodes, records: s.records}, nil
}

// Front returns the accuracy-versus-cost Pareto front among the cascades of
// at most maxStages stages (0: any), most accurate first. Equal points keep
// the shortest cascade.
func (sr *SearchResult) Front(maxStages int) ([]Candidate, error) {
	return sr.candidates(sr.frontIDs(maxStages))
}

// FrontByDepth returns the union of the fronts for every stage limit from 1
// to maxStages (0: the search's): the cascades no other cascade beats on
// accuracy, cost and length together. Sorted most accurate first, then
// cheapest, then shortest. A planner walking it can fall back to a shorter
// cascade when a longer one fails on latency or on runners.
func (sr *SearchResult) FrontByDepth(maxStages int) ([]Candidate, error) {
	if maxStages <= 0 || maxStages > sr.maxStages {
		maxStages = sr.maxStages
	}
	seen := map[int32]bool{}
	var ids []int32
	for d := 1; d <= maxStages; d++ {
		for _, id := range sr.frontIDs(d) {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	slices.SortFunc(ids, sr.order(false))
	return sr.candidates(ids)
}

// order compares records: the most correct first, then the cheapest (or,
// with costFirst, the cheapest first, then the most correct), then the
// shortest, then the first found.
func (sr *SearchResult) order(costFirst bool) func(a, b int32) int {
	recs := sr.records
	return func(a, b int32) int {
		ra, rb := &recs[a], &recs[b]
		first, second := cmp.Compare(rb.correct, ra.correct), cmp.Compare(ra.cost, rb.cost)
		if costFirst {
			first, second = second, first
		}
		return cmp.Or(first, second, cmp.Compare(ra.stages, rb.stages), cmp.Compare(a, b))
	}
}

// frontIDs sorts the records of at most maxStages stages by cost and keeps
// those that beat every cheaper one, most accurate first.
func (sr *SearchResult) frontIDs(maxStages int) []int32 {
	recs := sr.records
	var ids []int32
	for i := range recs {
		if maxStages <= 0 || int(recs[i].stages) <= maxStages {
			ids = append(ids, int32(i))
		}
	}
	slices.SortFunc(ids, sr.order(true))
	best := int32(-1)
	var keep []int32
	for _, id := range ids {
		if recs[id].correct > best {
			best = recs[id].correct
			keep = append(keep, id)
		}
	}
	slices.Reverse(keep)
	return keep
}

// candidates rebuilds and re-evaluates the cascades of records ids.
func (sr *SearchResult) candidates(ids []int32) ([]Candidate, error) {
	out := make([]Candidate, 0, len(ids))
	for _, id := range ids {
		rec := sr.records[id]
		stages := []plan.Stage{{Model: sr.e.ladder[rec.last]}}
		for nd := rec.node; nd >= 0; nd = sr.nodes[nd].parent {
			stages = append(stages, plan.Stage{Model: sr.e.ladder[sr.nodes[nd].model], Threshold: sr.nodes[nd].threshold})
		}
		slices.Reverse(stages)
		ev, err := sr.e.Evaluate(stages)
		if err != nil {
			return nil, err
		}
		if ev.Correct != int(rec.correct) {
			return nil, fmt.Errorf("internal error: search counted %d correct for %s, evaluation %d", rec.correct, plan.CascadeString(stages), ev.Correct)
		}
		out = append(out, Candidate{Stages: stages, Evaluation: ev})
	}
	return out, nil
}

// estimateCandidates is the number of cascades before deduplication.
func estimateCandidates(models, maxStages, grid int) float64 {
	total := 0.0
	for k := 1; k <= maxStages; k++ {
		// C(models, k) subsets, grid^(k-1) threshold combinations.
		total += binomial(models, k) * math.Pow(float64(grid), float64(k-1))
	}
	return total
}

func binomial(n, k int) float64 {
	r := 1.0
	for i := 1; i <= k; i++ {
		r = r * float64(n-k+i) / float64(i)
	}
	return r
}

type searcher struct {
	e         *Evaluator
	ctx       context.Context
	grids     [][]float64
	order     [][]int32
	rank      [][]int32
	maxStages int
	bufs      [][]int32
	prefix    [][]int32
	mark      []uint32
	markGen   uint32
	nodes     []searchNode
	records   []searchRecord
	steps     int
}

// expand records every cascade that continues prefix node (at depth stages,
// last model lastModel) whose reach set for the next stage is reach.
func (s *searcher) expand(depth int, node int32, lastModel int, reach []int32, correct int, cost float64) error {
	e := s.e
	L := len(e.ladder)
	r := float64(len(reach))
	for m := lastModel + 1; m < L; m++ {
		s.steps++
		if s.steps&1023 == 0 {
			if err := s.ctx.Err(); err != nil {
				return fmt.Errorf("cascade search: %w", err)
			}
		}
		stageCost := cost + r*e.costMs[m]
		canContinue := m < L-1 && depth+2 <= s.maxStages
		if !canContinue {
			// Only as the last stage: count its correct answers.
			c := 0
			cm := e.correct[m]
			for _, i := range reach {
				if cm[i] {
					c++
				}
			}
			s.records = append(s.records, searchRecord{node: node, last: int32(m), stages: int32(depth + 1), correct: int32(correct + c), cost: stageCost})
			continue
		}
		sorted := s.sortBy(m, reach, s.bufs[depth][:len(reach)])
		pre := s.prefix[depth][:len(sorted)+1]
		pre[0] = 0
		cm := e.correct[m]
		for j, i := range sorted {
			pre[j+1] = pre[j]
			if cm[i] {
				pre[j+1]++
			}
		}
		total := int(pre[len(sorted)])
		s.records = append(s.records, searchRecord{node: node, last: int32(m), stages: int32(depth + 1), correct: int32(correct + total), cost: stageCost})

		conf := e.conf[m]
		prevK := -1
		for _, t := range s.grids[m] {
			// k = number of items the stage does not answer; they sort first.
			k := 0
			lo, hi := 0, len(sorted)
			for lo < hi {
				mid := int(uint(lo+hi) >> 1)
				if !plan.Answers(conf[sorted[mid]], t, false) {
					lo = mid + 1
				} else {
					hi = mid
				}
			}
			k = lo
			if k == 0 || k == len(sorted) || k == prevK {
				continue
			}
			prevK = k
			answeredCorrect := total - int(pre[k])
			s.nodes = append(s.nodes, searchNode{parent: node, model: int32(m), threshold: t})
			child := int32(len(s.nodes) - 1)
			if err := s.expand(depth+1, child, m, sorted[:k], correct+answeredCorrect, stageCost); err != nil {
				return err
			}
		}
	}
	return nil
}

// sortBy writes reach sorted by model m's confidence (ascending) into dst.
// Large sets are filtered from the model's global order in O(n); small ones
// are sorted by rank.
func (s *searcher) sortBy(m int, reach, dst []int32) []int32 {
	n := len(s.order[m])
	if len(reach)*16 > n {
		s.markGen++
		if s.markGen == 0 {
			clear(s.mark)
			s.markGen = 1
		}
		for _, i := range reach {
			s.mark[i] = s.markGen
		}
		dst = dst[:0]
		for _, i := range s.order[m] {
			if s.mark[i] == s.markGen {
				dst = append(dst, i)
			}
		}
		return dst
	}
	copy(dst, reach)
	rank := s.rank[m]
	slices.SortFunc(dst, func(a, b int32) int { return cmp.Compare(rank[a], rank[b]) })
	return dst
}
