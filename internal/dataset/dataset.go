// Package dataset reads labeled data sets into memory as float32 tensors, the
// form ONNX Runtime sessions take, for offline work such as computing replay
// data (cascadeserve replay), benchmarks and demos.
//
// Two file formats are supported, each plain or gzip-compressed (detected from
// the content, not the file name):
//
//   - IDX, the format of the original MNIST files: an idx3 (or higher rank)
//     file of unsigned bytes or float32 items plus an idx1 file of labels
//     (unsigned bytes or int32). Unsigned-byte pixels are scaled to [0,1]
//     (value/255), and the bytes are kept too (Set.Bytes); float32 values
//     are taken as they are. See ReadIDX.
//
//   - The CascadeServe tensor file ("CSTENSOR", usually *.cstensor or
//     *.cstensor.gz), a minimal container for a user's own data. Version 1,
//     every field little-endian:
//
//     magic    [8]byte   "CSTENSOR"
//     version  uint32    1
//     dtype    uint32    1 = float32, 2 = uint8
//     divisor  float32   finite, > 0: item value = float32(stored) / divisor
//     rank     uint32    rank of one item, 1..8
//     dims     rank × uint32, each >= 1 (the item shape, batch axis excluded)
//     n        uint32    number of items, >= 1
//     data     n × prod(dims) values of dtype, row-major, item after item
//     labels   n × int32, each >= 0
//
//     Nothing may follow the labels. A uint8 file with divisor 255 stores
//     images in a quarter of the space and reads back as pixels in [0,1]
//     (with its bytes kept in Set.Bytes); a
//     float32 file with divisor 1 stores any float32 tensor exactly. See
//     ReadTensor and WriteTensor.
//
// Broken files fail with errors that wrap ErrTruncated (the file ends early),
// ErrCorrupt (the content is inconsistent) or ErrUnsupported (a valid file of
// a kind this package does not read), and say which file and field.
package dataset

import (
	"errors"
	"fmt"
	"slices"
)

// Errors that callers can branch on with errors.Is.
var (
	// ErrTruncated means a file ended before the data its header announces.
	ErrTruncated = errors.New("dataset: file truncated")
	// ErrCorrupt means a file's content is inconsistent: a wrong magic number,
	// an impossible header, trailing bytes, a bad label or checksum.
	ErrCorrupt = errors.New("dataset: file corrupt")
	// ErrUnsupported means a well-formed file this package does not read,
	// for example an IDX file of int16 values or a newer tensor file version.
	ErrUnsupported = errors.New("dataset: unsupported format")
	// ErrShape means a requested item shape or range does not fit the data.
	ErrShape = errors.New("dataset: shape mismatch")
)

// maxValues bounds the number of values a header may announce (8 GiB of
// float32s), so a corrupt header is reported instead of exhausting memory.
const maxValues = 1 << 31

// Set is an in-memory labeled data set: n items of one shape, as float32.
type Set struct {
	// ItemShape is the shape of one item, without the batch axis
	// (for MNIST [1, 28, 28]).
	ItemShape []int64
	// Data holds Len()*ItemSize() values, item after item, row-major.
	Data []float32
	// Labels holds the class of every item.
	Labels []int32
	// Bytes, when not nil, holds the items as the file stored them, one
	// unsigned byte per value (IDX unsigned-byte files, uint8 tensor files):
	// Data[i] = float32(Bytes[i]) / ByteDivisor. Models that take uint8
	// input are fed these bytes (see internal/modelinput), not values
	// converted back from Data.
	Bytes []uint8
	// ByteDivisor is the divisor of Bytes (255 for IDX files, the tensor
	// file's divisor); 0 when Bytes is nil.
	ByteDivisor float32
}

// ItemBytes returns the stored bytes of item i, a view into s.Bytes, or nil
// when the set holds no bytes.
func (s *Set) ItemBytes(i int) []uint8 {
	if s.Bytes == nil {
		return nil
	}
	k := s.ItemSize()
	return s.Bytes[i*k : (i+1)*k : (i+1)*k]
}

// Len returns the number of items.
func (s *Set) Len() int { return len(s.Labels) }

// ItemSize returns the number of values in one item (the product of ItemShape).
func (s *Set) ItemSize() int { return shapeSize(s.ItemShape) }

// Item returns the values of item i, a view into s.Data. It panics if i is out
// of range, like a slice index.
func (s *Set) Item(i int) []float32 {
	k := s.ItemSize()
	return s.Data[i*k : (i+1)*k : (i+1)*k]
}

// Slice returns items [from, to) as a Set sharing s's memory. The error wraps
// ErrShape if the range is empty or out of bounds.
func (s *Set) Slice(from, to int) (*Set, error) {
	if from < 0 || to > s.Len() || from >= to {
		return nil, fmt.Errorf("%w: range [%d,%d) of a set of %d items", ErrShape, from, to, s.Len())
	}
	k := s.ItemSize()
	out := &Set{
		ItemShape:   slices.Clone(s.ItemShape),
		Data:        s.Data[from*k : to*k : to*k],
		Labels:      s.Labels[from:to:to],
		ByteDivisor: s.ByteDivisor,
	}
	if s.Bytes != nil {
		out.Bytes = s.Bytes[from*k : to*k : to*k]
	}
	return out, nil
}

// Reshape returns s with items of the given shape, sharing s's memory. The
// error wraps ErrShape if the shape has a non-positive dimension or a
// different number of values per item.
func (s *Set) Reshape(shape []int64) (*Set, error) {
	if err := checkShape(shape); err != nil {
		return nil, err
	}
	if shapeSize(shape) != s.ItemSize() {
		return nil, fmt.Errorf("%w: cannot reshape items of shape %v (%d values) to %v (%d values)",
			ErrShape, s.ItemShape, s.ItemSize(), shape, shapeSize(shape))
	}
	return &Set{ItemShape: slices.Clone(shape), Data: s.Data, Labels: s.Labels, Bytes: s.Bytes, ByteDivisor: s.ByteDivisor}, nil
}

// Validate checks that the shape, data and labels agree.
func (s *Set) Validate() error {
	if err := checkShape(s.ItemShape); err != nil {
		return err
	}
	if len(s.Labels) == 0 {
		return fmt.Errorf("%w: no items", ErrShape)
	}
	if want := len(s.Labels) * s.ItemSize(); len(s.Data) != want {
		return fmt.Errorf("%w: %d values for %d items of shape %v (want %d)", ErrShape, len(s.Data), len(s.Labels), s.ItemShape, want)
	}
	if s.Bytes != nil && (len(s.Bytes) != len(s.Data) || !(s.ByteDivisor > 0)) {
		return fmt.Errorf("%w: %d bytes with divisor %v for %d values", ErrShape, len(s.Bytes), s.ByteDivisor, len(s.Data))
	}
	for i, l := range s.Labels {
		if l < 0 {
			return fmt.Errorf("%w: item %d has negative label %d", ErrShape, i, l)
		}
	}
	return nil
}

func checkShape(shape []int64) error {
	if len(shape) == 0 || len(shape) > maxRank {
		return fmt.Errorf("%w: item shape %v must have rank 1..%d", ErrShape, shape, maxRank)
	}
	n := int64(1)
	for _, d := range shape {
		if d < 1 || d > maxValues {
			return fmt.Errorf("%w: item shape %v has dimension %d", ErrShape, shape, d)
		}
		n *= d
		if n > maxValues {
			return fmt.Errorf("%w: item shape %v is too large", ErrShape, shape)
		}
	}
	return nil
}

func shapeSize(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}

// maxRank bounds the rank of an item in both file formats.
const maxRank = 8
