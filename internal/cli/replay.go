package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/internal/modelinput"
	"github.com/cascadeserve/cascadeserve/internal/onnxrt"
	"github.com/cascadeserve/cascadeserve/models/mnist"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// Named data sets of the --split flag.
const (
	splitMNISTTest       = "mnist-test"
	splitMNISTValidation = "mnist-validation"
)

const replayUsage = `replay --out FILE (--split NAME | --images FILE --labels FILE | --data FILE) [flags]

Runs every model of a ladder over a labeled data set with ONNX Runtime and
writes the per-item class probabilities of every model, with the true labels,
to a replay file (gzip-compressed binary, see pkg/plan). The planner reads
replay files to score cascades without running models.

Data set (exactly one):
  --split mnist-test        the 10,000 MNIST test images (embedded)
  --split mnist-validation  the MNIST validation split: items [55000,60000) of
                            train-images-idx3-ubyte (found with go list in the
                            current module, or in --mnist-dir)
  --images F --labels F     IDX files, plain or gzip (MNIST format): unsigned
                            byte items scaled to [0,1] or float32 items;
                            unsigned byte or int32 labels
  --data F                  a CascadeServe tensor file (.cstensor[.gz], see
                            internal/dataset): float32 or uint8 items + int32 labels
--range from:to selects items [from,to) of that set (either end may be empty).

Models (default: the embedded MNIST ladder):
  --models a=a.onnx,b=b.onnx   names and files, in ladder order
  --model-dir DIR [--ladder a,b]  DIR/a.onnx, DIR/b.onnx (default: every .onnx
                                  file in DIR, sorted by name)
Any model the runner accepts works: one input (float32 or uint8, dynamic batch
axis, static item shape whose size equals the data set's item size), one
float32 output [batch, classes] of logits or probabilities (metadata
cascadeserve.output_kind, or --output-kind). All models must agree on the
number of classes.

Model inputs are built as the stage workers build them (internal/modelinput):
items stored as bytes (IDX unsigned-byte files, uint8 tensor files) are UINT8
items, each byte standing for byte × --uint8-scale (default: the file's own,
1/255 for IDX): a uint8 model receives the bytes as they are, a float32 model
byte × scale. Float32 items reach a float32 model as they are and a uint8
model only when they are bytes times the scale. The item shape and the scale
are recorded in the replay file, and 'cascadeserve plan' puts them in the plan.

A model that scores near chance (accuracy <= 1.5 / classes, on at least
10 × classes items) fails the replay, naming the model: its inputs are almost
certainly not what it was trained on. --allow-chance writes the replay anyway.`

// replayConfig is the parsed command line of cascadeserve replay.
type replayConfig struct {
	out         string
	split       string
	mnistDir    string
	images      string
	labels      string
	data        string
	rng         string
	models      string
	modelDir    string
	ladder      string
	batch       int
	threads     int
	outputKind  string
	quiet       bool
	uint8Scale  float64
	allowChance bool
}

// register defines replay's flags on fs, stored in c.
func (c *replayConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.out, "out", "", "replay file to write (required)")
	fs.StringVar(&c.split, "split", "", "named data set: "+splitMNISTTest+" or "+splitMNISTValidation)
	fs.StringVar(&c.mnistDir, "mnist-dir", "", "folder with the MNIST training files for "+splitMNISTValidation+" (default: located with go list)")
	fs.StringVar(&c.images, "images", "", "IDX items file (with --labels)")
	fs.StringVar(&c.labels, "labels", "", "IDX labels file (with --images)")
	fs.StringVar(&c.data, "data", "", "CascadeServe tensor file")
	fs.StringVar(&c.rng, "range", "", "items [from,to) of the data set, e.g. 0:1000")
	fs.StringVar(&c.models, "models", "", "comma-separated name=file.onnx, in ladder order")
	fs.StringVar(&c.modelDir, "model-dir", "", "folder of <name>.onnx files")
	fs.StringVar(&c.ladder, "ladder", "", "comma-separated model names in --model-dir, in ladder order")
	fs.IntVar(&c.batch, "batch", 256, "items per ONNX Runtime call")
	fs.IntVar(&c.threads, "threads", 1, "ONNX Runtime intra-op threads per model")
	fs.StringVar(&c.outputKind, "output-kind", "", "override how outputs are read: auto, logits or probabilities (default: model metadata, else auto)")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress bar")
	fs.Float64Var(&c.uint8Scale, "uint8-scale", -1, "what a stored byte stands for: byte × scale (default: the data set's, 1/255 for IDX bytes; 0 for float32 data)")
	fs.BoolVar(&c.allowChance, "allow-chance", false, "write the replay even when a model scores near chance")
}

func runReplay(ctx context.Context, env Env, args []string) error {
	var c replayConfig
	if _, err := parseCommandFlags(env, "replay", replayUsage, c.register, args); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: replay: %w", ErrUsage, err)
	}
	if err := c.run(ctx, env); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	return nil
}

// run runs the models over the data set, prints each model's accuracy and
// speed and writes the replay file. Its errors do not name the command.
func (c *replayConfig) run(ctx context.Context, env Env) error {
	set, desc, err := c.loadSet(ctx)
	if err != nil {
		return err
	}
	models, err := c.loadModels()
	if err != nil {
		return err
	}
	rt, _, err := openRuntime(env, onnxrt.ProviderCPU)
	if err != nil {
		return err
	}
	defer rt.Close()

	scale := c.scaleOf(set)
	fmt.Fprintf(env.Stderr, "replay: %d items of %s (item shape %v, uint8 scale %.6g), %d models\n", set.Len(), desc, set.ItemShape, scale, len(models))
	opts := onnxrt.SessionOptions{IntraOpThreads: c.threads, OutputKind: c.outputKind}
	progress := &replayProgress{w: env.Stderr}
	if !c.quiet {
		progress.bar = newProgressBar(env, len(models)*set.Len(), "replay", progressbar.OptionShowIts(), progressbar.OptionSetItsString("items"))
		defer progress.bar.Finish()
	}
	r, stats, err := computeReplay(ctx, rt, models, set, c.batch, scale, opts, progress)
	if err != nil {
		return err
	}

	printReplayStats(env.Stdout, stats)
	if err := checkChance(stats, r); err != nil {
		if !c.allowChance {
			return fmt.Errorf("%w; nothing written (--allow-chance writes it anyway)", err)
		}
		fmt.Fprintf(env.Stderr, "replay: warning: %v\n", err)
	}
	if err := writeReplayAtomic(r, c.out); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "wrote %s (%d items, %d classes, models %s)\n", c.out, r.Len(), r.Classes, strings.Join(r.Models, ","))
	return nil
}

// scaleOf is the UINT8 scale of set's items: --uint8-scale, else the
// set's own (1/its byte divisor) for byte items, else 0.
func (c *replayConfig) scaleOf(set *dataset.Set) float64 {
	if c.uint8Scale >= 0 {
		return c.uint8Scale
	}
	if set.Bytes != nil {
		return 1 / float64(set.ByteDivisor)
	}
	return 0
}

// printReplayStats writes the table of each model's input, accuracy and
// speed.
func printReplayStats(w io.Writer, stats []replayStat) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "model\tinput\taccuracy %\titems/s")
	for _, s := range stats {
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.0f\n", s.name, s.inputType, 100*s.accuracy, s.itemsPerSec)
	}
	tw.Flush()
}

// ErrChanceAccuracy marks a replay in which a model scores near chance.
var ErrChanceAccuracy = errors.New("accuracy near chance")

// checkChance fails when a model's accuracy is at most 1.5 / classes on a
// set of at least 10 × classes items: such a model is almost certainly fed
// inputs it was not trained on (a scale, layout or datatype mismatch), and a
// plan made from its replay would be meaningless.
func checkChance(stats []replayStat, r *plan.Replay) error {
	if r.Len() < 10*r.Classes {
		return nil
	}
	limit := 1.5 / float64(r.Classes)
	var errs []error
	for _, s := range stats {
		if s.accuracy <= limit {
			errs = append(errs, fmt.Errorf("model %q: %w: %.2f%% on %d items, at most 1.5 × chance (%d classes: %.2f%%); "+
				"its input is probably not what it was trained on (it takes %s %v; items %v, uint8 scale %.6g): check --uint8-scale, the data set and the model's preprocessing",
				s.name, ErrChanceAccuracy, 100*s.accuracy, r.Len(), r.Classes, 100/float64(r.Classes), s.inputType, s.itemShape, r.ItemShape, r.UINT8Scale))
		}
	}
	return errors.Join(errs...)
}

func (c *replayConfig) validate() error {
	var errs []error
	if c.out == "" {
		errs = append(errs, errors.New("--out is required"))
	}
	sources := 0
	if c.split != "" {
		sources++
		if c.split != splitMNISTTest && c.split != splitMNISTValidation {
			errs = append(errs, fmt.Errorf("--split %q, want %s or %s", c.split, splitMNISTTest, splitMNISTValidation))
		}
	}
	if c.images != "" || c.labels != "" {
		sources++
		if c.images == "" || c.labels == "" {
			errs = append(errs, errors.New("--images and --labels go together"))
		}
	}
	if c.data != "" {
		sources++
	}
	if sources != 1 {
		errs = append(errs, errors.New("choose exactly one data set: --split, --images/--labels or --data"))
	}
	if c.mnistDir != "" && c.split != splitMNISTValidation {
		errs = append(errs, errors.New("--mnist-dir only applies to --split "+splitMNISTValidation))
	}
	if c.models != "" && c.modelDir != "" {
		errs = append(errs, errors.New("--models and --model-dir are exclusive"))
	}
	if c.ladder != "" && c.modelDir == "" {
		errs = append(errs, errors.New("--ladder needs --model-dir"))
	}
	if c.batch < 1 {
		errs = append(errs, fmt.Errorf("--batch %d, want >= 1", c.batch))
	}
	if c.threads < 1 {
		errs = append(errs, fmt.Errorf("--threads %d, want >= 1", c.threads))
	}
	if math.IsNaN(c.uint8Scale) || math.IsInf(c.uint8Scale, 0) || c.uint8Scale < 0 && c.uint8Scale != -1 {
		errs = append(errs, fmt.Errorf("--uint8-scale %v, want >= 0", c.uint8Scale))
	}
	if _, _, err := parseRange(c.rng, 1<<62); c.rng != "" && err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// loadSet reads the selected data set and applies --range. It also returns a
// short description for progress output.
func (c *replayConfig) loadSet(ctx context.Context) (*dataset.Set, string, error) {
	var (
		set  *dataset.Set
		desc string
		err  error
	)
	switch {
	case c.split == splitMNISTTest:
		set, err = mnist.TestImages()
		desc = splitMNISTTest
	case c.split == splitMNISTValidation:
		dir := c.mnistDir
		if dir == "" {
			if dir, err = mnist.FindTrainDir(ctx, ""); err != nil {
				return nil, "", fmt.Errorf("%w (or pass --mnist-dir)", err)
			}
		}
		set, err = mnist.ValidationImages(dir)
		desc = splitMNISTValidation + " (" + dir + ")"
	case c.data != "":
		set, err = dataset.ReadTensorFile(c.data)
		desc = c.data
	default:
		set, err = dataset.ReadIDXFiles(c.images, c.labels, nil)
		desc = c.images
	}
	if err != nil {
		return nil, "", err
	}
	if c.rng != "" {
		from, to, err := parseRange(c.rng, set.Len())
		if err != nil {
			return nil, "", err
		}
		if set, err = set.Slice(from, to); err != nil {
			return nil, "", fmt.Errorf("--range %s: %w", c.rng, err)
		}
		desc += " [" + strconv.Itoa(from) + ":" + strconv.Itoa(to) + ")"
	}
	return set, desc, nil
}

// parseRange parses "from:to" (either end may be empty: from defaults to 0,
// to to n) into a non-empty range within [0, n].
func parseRange(s string, n int) (from, to int, err error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("--range %q, want from:to", s)
	}
	from, to = 0, n
	if a != "" {
		if from, err = strconv.Atoi(a); err != nil {
			return 0, 0, fmt.Errorf("--range %q: %w", s, err)
		}
	}
	if b != "" {
		if to, err = strconv.Atoi(b); err != nil {
			return 0, 0, fmt.Errorf("--range %q: %w", s, err)
		}
	}
	if from < 0 || to > n || from >= to {
		return 0, 0, fmt.Errorf("--range %q: want 0 <= from < to <= %d", s, n)
	}
	return from, to, nil
}

// replayModel is one model to run: its name and ONNX bytes.
type replayModel struct {
	name string
	onnx []byte
}

func (c *replayConfig) loadModels() ([]replayModel, error) {
	type ref struct{ name, path string }
	var refs []ref
	switch {
	case c.models != "":
		for _, kv := range strings.Split(c.models, ",") {
			name, path, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok || name == "" || path == "" {
				return nil, fmt.Errorf("%w: --models entry %q, want name=file.onnx", ErrUsage, kv)
			}
			refs = append(refs, ref{name, path})
		}
	case c.modelDir != "" && c.ladder != "":
		for _, name := range strings.Split(c.ladder, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				return nil, fmt.Errorf("%w: empty name in --ladder %q", ErrUsage, c.ladder)
			}
			refs = append(refs, ref{name, filepath.Join(c.modelDir, name+".onnx")})
		}
	case c.modelDir != "":
		paths, err := filepath.Glob(filepath.Join(c.modelDir, "*.onnx"))
		if err != nil {
			return nil, err
		}
		if len(paths) == 0 {
			return nil, fmt.Errorf("no .onnx files in %s", c.modelDir)
		}
		slices.Sort(paths)
		for _, p := range paths {
			refs = append(refs, ref{strings.TrimSuffix(filepath.Base(p), ".onnx"), p})
		}
	default:
		var models []replayModel
		for _, name := range mnist.Ladder() {
			b, err := mnist.Model(name)
			if err != nil {
				return nil, err
			}
			models = append(models, replayModel{name, b})
		}
		return models, nil
	}
	var models []replayModel
	seen := map[string]bool{}
	for _, r := range refs {
		if seen[r.name] {
			return nil, fmt.Errorf("%w: model %q given twice", ErrUsage, r.name)
		}
		seen[r.name] = true
		b, err := os.ReadFile(r.path)
		if err != nil {
			return nil, fmt.Errorf("model %q: %w", r.name, err)
		}
		models = append(models, replayModel{r.name, b})
	}
	return models, nil
}

// replayStat is what the command reports per model.
type replayStat struct {
	name        string
	inputType   string
	itemShape   []int64
	accuracy    float64
	itemsPerSec float64
}

// replayProgress reports a replay's progress on w: a line per model done
// and, when bar is set, a bar over the items of every model.
type replayProgress struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	model string // the model the bar's description names
}

// ran counts n more items run by model.
func (p *replayProgress) ran(model string, n int) {
	if p.bar == nil {
		return
	}
	if model != p.model {
		p.model = model
		p.bar.Describe(fmt.Sprintf("replay %-12s", model))
	}
	p.bar.Add(n)
}

// printf writes a line above the bar.
func (p *replayProgress) printf(format string, args ...any) {
	if p.bar != nil {
		p.bar.Clear()
	}
	fmt.Fprintf(p.w, format, args...)
}

// computeReplay runs every model over every item of set, batch items per
// call, with UINT8 scale uint8Scale, and returns the replay, reporting its
// progress.
func computeReplay(ctx context.Context, rt *onnxrt.Runtime, models []replayModel, set *dataset.Set, batch int,
	uint8Scale float64, opts onnxrt.SessionOptions, progress *replayProgress) (*plan.Replay, []replayStat, error) {
	r := &plan.Replay{Labels: set.Labels, Probs: map[string][]float32{}, ItemShape: slices.Clone(set.ItemShape), UINT8Scale: uint8Scale}
	var stats []replayStat
	for _, m := range models {
		probs, info, secs, err := runModel(ctx, rt, m, set, batch, uint8Scale, opts, progress)
		classes := info.NumClasses
		if err != nil {
			return nil, nil, err
		}
		if r.Classes == 0 {
			r.Classes = classes
		} else if classes != r.Classes {
			return nil, nil, fmt.Errorf("model %q has %d classes, %q has %d", m.name, classes, r.Models[0], r.Classes)
		}
		r.Models = append(r.Models, m.name)
		r.Probs[m.name] = probs
		correct := 0
		for i, l := range set.Labels {
			if argmax(probs[i*classes:(i+1)*classes]) == int(l) {
				correct++
			}
		}
		st := replayStat{name: m.name, inputType: info.InputType, itemShape: info.ItemShape,
			accuracy: float64(correct) / float64(set.Len()), itemsPerSec: float64(set.Len()) / secs}
		stats = append(stats, st)
		progress.printf("replay: %-12s accuracy %6.2f%%  %8.0f items/s\n", m.name, 100*st.accuracy, st.itemsPerSec)
	}
	for i, l := range r.Labels {
		if int(l) >= r.Classes {
			return nil, nil, fmt.Errorf("item %d has label %d but the models have %d classes", i, l, r.Classes)
		}
	}
	return r, stats, nil
}

// runModel returns the model's probabilities for every item of set, its
// description and the seconds spent in inference. Its inputs come from the
// transform the stage workers use.
func runModel(ctx context.Context, rt *onnxrt.Runtime, m replayModel, set *dataset.Set, batch int,
	uint8Scale float64, opts onnxrt.SessionOptions, progress *replayProgress) ([]float32, onnxrt.ModelInfo, float64, error) {
	var none onnxrt.ModelInfo
	sess, err := rt.Open(m.name, m.onnx, opts)
	if err != nil {
		return nil, none, 0, fmt.Errorf("open model %q: %w", m.name, err)
	}
	defer sess.Close()
	info := sess.Info()
	if info.ItemSize() != set.ItemSize() {
		return nil, none, 0, fmt.Errorf("model %q takes items of shape %v (%d values), the data set has %v (%d values)",
			m.name, info.ItemShape, info.ItemSize(), set.ItemShape, set.ItemSize())
	}
	tr, err := modelinput.New(m.name, info.InputType, set.ItemSize(), uint8Scale)
	if err != nil {
		return nil, none, 0, err
	}
	k := info.NumClasses
	probs := make([]float32, set.Len()*k)
	var in modelinput.Batch
	start := time.Now()
	for from := 0; from < set.Len(); from += batch {
		if err := ctx.Err(); err != nil {
			return nil, none, 0, err
		}
		to := min(from+batch, set.Len())
		in.Reset()
		for i := from; i < to; i++ {
			if err := tr.AppendItem(&in, set, i); err != nil {
				return nil, none, 0, fmt.Errorf("item %d: %w", i, err)
			}
		}
		if _, err := tr.Run(sess, &in, probs[from*k:to*k]); err != nil {
			return nil, none, 0, err
		}
		progress.ran(m.name, to-from)
	}
	return probs, info, time.Since(start).Seconds(), nil
}

// argmax is the most probable class, as the workers pick it.
func argmax(p []float32) int {
	_, label := plan.Confidence(plan.MetricMaxProb, p)
	return label
}

// writeReplayAtomic writes the replay next to path and renames it into
// place, so an interrupted run never leaves a half-written replay file.
func writeReplayAtomic(r *plan.Replay, path string) error {
	tmp := path + ".tmp"
	if err := r.WriteFile(tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write replay: %w", err)
	}
	return nil
}
