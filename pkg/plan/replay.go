package plan

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
)

// Replay holds, for every model of a ladder, the class probabilities it gave
// to every item of a labeled data set. The planner computes the exact
// accuracy and per-stage reach of any cascade from it without running a model.
type Replay struct {
	// Classes is the number of classes of the task.
	Classes int
	// Labels holds the true class of each item.
	Labels []int32
	// Models lists the models in the order they were written.
	Models []string
	// Probs maps a model name to its probabilities: Len()*Classes values,
	// row-major (item i's probabilities are Probs[m][i*Classes:(i+1)*Classes]).
	Probs map[string][]float32
	// ItemShape and UINT8Scale, when set, record the pipeline input the
	// models were run on (cascadeserve replay sets them): the shape of one
	// item, and what a UINT8 byte stands for (Input.UINT8Scale; 0: no
	// byte form). A plan made from the replay must have the same input, or
	// its models would be served other values than they were measured on.
	ItemShape  []int64
	UINT8Scale float64
}

// ErrBadReplay marks a replay file that cannot be read or is inconsistent.
var ErrBadReplay = errors.New("bad replay data")

// replayMagic opens every replay file (after gzip decompression).
const replayMagic = "CSREPLAY"

// replayVersion is the newest version of the binary layout below;
// replayVersionNoInput is the layout without the input section, written
// when a replay records no input (and read as before).
const (
	replayVersion        = 2
	replayVersionNoInput = 1
)

// Replay file layout, version 2. The whole file is gzip-compressed; inside,
// every integer and float is little-endian:
//
//	magic    [8]byte  "CSREPLAY"
//	version  uint32   2 (1: without the input section)
//	n        uint32   number of items
//	classes  uint32   number of classes
//	models   uint32   number of models
//	models × { nameLen uint16; name [nameLen]byte }
//	input (version 2 only) { rank uint32; rank × uint32 dims; uint8Scale float64 }
//	labels   n × int32
//	models × { probs n*classes × float32 }   (same order as the names)

// Len returns the number of items.
func (r *Replay) Len() int { return len(r.Labels) }

// Row returns model m's probabilities for item i.
func (r *Replay) Row(model string, i int) []float32 {
	p := r.Probs[model]
	return p[i*r.Classes : (i+1)*r.Classes]
}

// Validate checks that the replay is internally consistent.
func (r *Replay) Validate() error {
	var errs []error
	if r.Classes < 2 {
		errs = append(errs, fmt.Errorf("classes is %d, need at least 2", r.Classes))
	}
	if len(r.Labels) == 0 {
		errs = append(errs, errors.New("no items"))
	}
	if len(r.Models) == 0 {
		errs = append(errs, errors.New("no models"))
	}
	seen := map[string]bool{}
	for _, m := range r.Models {
		if m == "" {
			errs = append(errs, errors.New("empty model name"))
		}
		if seen[m] {
			errs = append(errs, fmt.Errorf("model %q listed twice", m))
		}
		seen[m] = true
		p, ok := r.Probs[m]
		if !ok {
			errs = append(errs, fmt.Errorf("model %q has no probabilities", m))
			continue
		}
		if len(p) != len(r.Labels)*r.Classes {
			errs = append(errs, fmt.Errorf("model %q has %d probabilities, want %d items × %d classes", m, len(p), len(r.Labels), r.Classes))
		}
	}
	for m := range r.Probs {
		if !seen[m] {
			errs = append(errs, fmt.Errorf("probabilities for unlisted model %q", m))
		}
	}
	if len(r.ItemShape) > maxReplayRank {
		errs = append(errs, fmt.Errorf("item shape %v has rank > %d", r.ItemShape, maxReplayRank))
	}
	for _, d := range r.ItemShape {
		if d < 1 || d > math.MaxUint32 {
			errs = append(errs, fmt.Errorf("item shape %v has dimension %d", r.ItemShape, d))
			break
		}
	}
	if !(r.UINT8Scale >= 0) || math.IsInf(r.UINT8Scale, 0) {
		errs = append(errs, fmt.Errorf("uint8 scale %v, want finite and >= 0", r.UINT8Scale))
	}
	for i, l := range r.Labels {
		if l < 0 || int(l) >= r.Classes {
			errs = append(errs, fmt.Errorf("item %d has label %d outside [0,%d)", i, l, r.Classes))
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrBadReplay, err)
	}
	return nil
}

// Subset returns a replay restricted to the named models, in that order.
func (r *Replay) Subset(models []string) (*Replay, error) {
	out := &Replay{Classes: r.Classes, Labels: r.Labels, Models: slices.Clone(models), Probs: map[string][]float32{},
		ItemShape: slices.Clone(r.ItemShape), UINT8Scale: r.UINT8Scale}
	for _, m := range models {
		p, ok := r.Probs[m]
		if !ok {
			return nil, fmt.Errorf("%w: model %q not in replay (have %v)", ErrBadReplay, m, r.Models)
		}
		out.Probs[m] = p
	}
	return out, nil
}

// WriteFile writes the replay to path in the gzip-compressed binary format.
func (r *Replay) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write replay: %w", err)
	}
	if err := r.Write(f); err != nil {
		f.Close()
		return fmt.Errorf("write replay %s: %w", path, err)
	}
	return f.Close()
}

// Write writes the replay in the gzip-compressed binary format.
func (r *Replay) Write(w io.Writer) error {
	if err := r.Validate(); err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(zw)
	le := binary.LittleEndian
	hdr := make([]byte, 0, 24)
	version := uint32(replayVersion)
	if r.ItemShape == nil && r.UINT8Scale == 0 {
		version = replayVersionNoInput
	}
	hdr = append(hdr, replayMagic...)
	hdr = le.AppendUint32(hdr, version)
	hdr = le.AppendUint32(hdr, uint32(len(r.Labels)))
	hdr = le.AppendUint32(hdr, uint32(r.Classes))
	hdr = le.AppendUint32(hdr, uint32(len(r.Models)))
	bw.Write(hdr)
	for _, m := range r.Models {
		if len(m) > math.MaxUint16 {
			return fmt.Errorf("model name too long (%d bytes)", len(m))
		}
		bw.Write(le.AppendUint16(nil, uint16(len(m))))
		bw.WriteString(m)
	}
	if version == replayVersion {
		in := le.AppendUint32(nil, uint32(len(r.ItemShape)))
		for _, d := range r.ItemShape {
			in = le.AppendUint32(in, uint32(d))
		}
		bw.Write(le.AppendUint64(in, math.Float64bits(r.UINT8Scale)))
	}
	buf := make([]byte, 0, 4096)
	for _, l := range r.Labels {
		buf = le.AppendUint32(buf, uint32(l))
		if len(buf) >= 4000 {
			bw.Write(buf)
			buf = buf[:0]
		}
	}
	for _, m := range r.Models {
		for _, p := range r.Probs[m] {
			buf = le.AppendUint32(buf, math.Float32bits(p))
			if len(buf) >= 4000 {
				bw.Write(buf)
				buf = buf[:0]
			}
		}
	}
	bw.Write(buf)
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// ReadReplayFile reads a replay file written by WriteFile.
func ReadReplayFile(path string) (*Replay, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read replay: %w", err)
	}
	defer f.Close()
	r, err := ReadReplay(f)
	if err != nil {
		return nil, fmt.Errorf("read replay %s: %w", path, err)
	}
	return r, nil
}

// maxReplayValues bounds what a header may claim, so a corrupt file cannot
// make the reader allocate without limit (4 GiB of float32s).
const maxReplayValues = 1 << 30

// maxReplayRank bounds the rank of a recorded item shape.
const maxReplayRank = 8

// ReadReplay reads a replay in the format written by Write.
func ReadReplay(rd io.Reader) (*Replay, error) {
	zr, err := gzip.NewReader(rd)
	if err != nil {
		return nil, fmt.Errorf("%w: not gzip: %w", ErrBadReplay, err)
	}
	br := bufio.NewReader(zr)
	le := binary.LittleEndian
	hdr := make([]byte, 24)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrBadReplay, err)
	}
	if string(hdr[:8]) != replayMagic {
		return nil, fmt.Errorf("%w: magic %q, want %q", ErrBadReplay, hdr[:8], replayMagic)
	}
	version := le.Uint32(hdr[8:])
	if version != replayVersion && version != replayVersionNoInput {
		return nil, fmt.Errorf("%w: version %d, this build reads %d and %d", ErrBadReplay, version, replayVersionNoInput, replayVersion)
	}
	n, classes, models := int(le.Uint32(hdr[12:])), int(le.Uint32(hdr[16:])), int(le.Uint32(hdr[20:]))
	if n == 0 || classes < 2 || models == 0 || models > 1024 || uint64(n)*uint64(classes)*uint64(models) > maxReplayValues {
		return nil, fmt.Errorf("%w: implausible header (items %d, classes %d, models %d)", ErrBadReplay, n, classes, models)
	}
	r := &Replay{Classes: classes, Labels: make([]int32, n), Probs: map[string][]float32{}}
	for range models {
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return nil, fmt.Errorf("%w: model names: %w", ErrBadReplay, err)
		}
		name := make([]byte, le.Uint16(l[:]))
		if _, err := io.ReadFull(br, name); err != nil {
			return nil, fmt.Errorf("%w: model names: %w", ErrBadReplay, err)
		}
		r.Models = append(r.Models, string(name))
	}
	var w [4]byte
	if version == replayVersion {
		if _, err := io.ReadFull(br, w[:]); err != nil {
			return nil, fmt.Errorf("%w: input: %w", ErrBadReplay, err)
		}
		rank := le.Uint32(w[:])
		if rank > maxReplayRank {
			return nil, fmt.Errorf("%w: input item rank %d > %d", ErrBadReplay, rank, maxReplayRank)
		}
		if rank > 0 {
			r.ItemShape = make([]int64, rank)
		}
		for i := range r.ItemShape {
			if _, err := io.ReadFull(br, w[:]); err != nil {
				return nil, fmt.Errorf("%w: input: %w", ErrBadReplay, err)
			}
			r.ItemShape[i] = int64(le.Uint32(w[:]))
		}
		var s [8]byte
		if _, err := io.ReadFull(br, s[:]); err != nil {
			return nil, fmt.Errorf("%w: input: %w", ErrBadReplay, err)
		}
		r.UINT8Scale = math.Float64frombits(le.Uint64(s[:]))
	}
	for i := range r.Labels {
		if _, err := io.ReadFull(br, w[:]); err != nil {
			return nil, fmt.Errorf("%w: labels: %w", ErrBadReplay, err)
		}
		r.Labels[i] = int32(le.Uint32(w[:]))
	}
	for _, m := range r.Models {
		p := make([]float32, n*classes)
		for i := range p {
			if _, err := io.ReadFull(br, w[:]); err != nil {
				return nil, fmt.Errorf("%w: probabilities of %q: %w", ErrBadReplay, m, err)
			}
			p[i] = math.Float32frombits(le.Uint32(w[:]))
		}
		r.Probs[m] = p
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}
