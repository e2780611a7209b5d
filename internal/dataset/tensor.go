package dataset

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
)

// tensorMagic opens every tensor file; tensorVersion is the layout described
// in the package documentation.
const (
	tensorMagic   = "CSTENSOR"
	tensorVersion = 1
)

// DType is the element type values are stored with in a tensor file.
type DType uint32

// Element types of the tensor file format.
const (
	Float32 DType = 1
	Uint8   DType = 2
)

// String returns the type's name.
func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case Uint8:
		return "uint8"
	default:
		return fmt.Sprintf("dtype(%d)", uint32(d))
	}
}

func (d DType) size() int64 {
	if d == Uint8 {
		return 1
	}
	return 4
}

// TensorOptions says how WriteTensor stores values.
type TensorOptions struct {
	// DType is the stored element type; the zero value means Float32.
	DType DType
	// Divisor maps stored values back to items: item value = stored /
	// Divisor. The zero value means 1. Uint8 with Divisor 255 stores [0,1]
	// pixels that are multiples of 1/255 (as ReadIDX produces) exactly.
	// Float32 values are stored as value*Divisor, which reads back exactly
	// when Divisor is a power of two (1 in particular).
	Divisor float32
}

// ReadTensorFile reads a tensor file, plain or gzip-compressed; see ReadTensor.
func ReadTensorFile(path string) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read tensor file: %w", err)
	}
	defer f.Close()
	s, err := readTensor(f)
	if err != nil {
		return nil, fmt.Errorf("read tensor file %s: %w", path, err)
	}
	return s, nil
}

// ReadTensor reads a data set in the CascadeServe tensor file format (see the
// package documentation), plain or gzip-compressed.
func ReadTensor(r io.Reader) (*Set, error) {
	s, err := readTensor(r)
	if err != nil {
		return nil, fmt.Errorf("read tensor file: %w", err)
	}
	return s, nil
}

func readTensor(r io.Reader) (*Set, error) {
	r, err := decompressed(r)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	hdr := make([]byte, 24)
	if err := readFull(r, hdr, "header"); err != nil {
		return nil, err
	}
	if string(hdr[:8]) != tensorMagic {
		return nil, fmt.Errorf("%w: magic %q, want %q", ErrCorrupt, hdr[:8], tensorMagic)
	}
	if v := le.Uint32(hdr[8:]); v != tensorVersion {
		return nil, fmt.Errorf("%w: tensor file version %d, this build reads %d", ErrUnsupported, v, tensorVersion)
	}
	dtype := DType(le.Uint32(hdr[12:]))
	if dtype != Float32 && dtype != Uint8 {
		return nil, fmt.Errorf("%w: dtype %d (want 1 float32 or 2 uint8)", ErrCorrupt, uint32(dtype))
	}
	divisor := math.Float32frombits(le.Uint32(hdr[16:]))
	if !(divisor > 0) || math.IsInf(float64(divisor), 0) {
		return nil, fmt.Errorf("%w: divisor %v (want finite and > 0)", ErrCorrupt, divisor)
	}
	rank := le.Uint32(hdr[20:])
	if rank == 0 || rank > maxRank {
		return nil, fmt.Errorf("%w: item rank %d (want 1..%d)", ErrCorrupt, rank, maxRank)
	}
	raw := make([]byte, 4*rank+4)
	if err := readFull(r, raw, "item shape and count"); err != nil {
		return nil, err
	}
	shape := make([]int64, rank)
	for i := range shape {
		shape[i] = int64(le.Uint32(raw[4*i:]))
	}
	if err := checkShape(shape); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	n := int64(le.Uint32(raw[4*rank:]))
	if n == 0 {
		return nil, fmt.Errorf("%w: no items", ErrCorrupt)
	}
	values := n * int64(shapeSize(shape))
	if values > maxValues {
		return nil, fmt.Errorf("%w: %d items of shape %v are more than %d values", ErrCorrupt, n, shape, int64(maxValues))
	}
	data, err := readPayload(r, values*dtype.size(), "data")
	if err != nil {
		return nil, err
	}
	s := &Set{ItemShape: shape, Data: make([]float32, values), Labels: make([]int32, n)}
	switch dtype {
	case Uint8:
		for i, b := range data {
			s.Data[i] = float32(b) / divisor
		}
		s.Bytes, s.ByteDivisor = data, divisor
	case Float32:
		for i := range s.Data {
			s.Data[i] = math.Float32frombits(le.Uint32(data[4*i:])) / divisor
		}
	}
	labels, err := readPayload(r, 4*n, "labels")
	if err != nil {
		return nil, err
	}
	for i := range s.Labels {
		l := int32(le.Uint32(labels[4*i:]))
		if l < 0 {
			return nil, fmt.Errorf("%w: label %d of item %d is negative", ErrCorrupt, l, i)
		}
		s.Labels[i] = l
	}
	if err := expectEOF(r); err != nil {
		return nil, err
	}
	return s, nil
}

// WriteTensorFile writes s to path in the tensor file format, gzip-compressed
// if path ends in ".gz".
func WriteTensorFile(path string, s *Set, opts TensorOptions) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write tensor file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write tensor file %s: %w", path, cerr)
		}
	}()
	var w io.Writer = f
	var zw *gzip.Writer
	if strings.HasSuffix(path, ".gz") {
		zw = gzip.NewWriter(f)
		w = zw
	}
	if err := WriteTensor(w, s, opts); err != nil {
		return fmt.Errorf("write tensor file %s: %w", path, err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return fmt.Errorf("write tensor file %s: %w", path, err)
		}
	}
	return nil
}

// WriteTensor writes s in the tensor file format (uncompressed). With
// DType Uint8 every value times Divisor must be an integer in [0, 255]
// (within 1e-3), so that reading the file back gives the same values;
// otherwise WriteTensor fails with ErrShape and writes nothing.
func WriteTensor(w io.Writer, s *Set, opts TensorOptions) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if opts.DType == 0 {
		opts.DType = Float32
	}
	if opts.Divisor == 0 {
		opts.Divisor = 1
	}
	if opts.DType != Float32 && opts.DType != Uint8 {
		return fmt.Errorf("%w: dtype %v", ErrUnsupported, opts.DType)
	}
	if !(opts.Divisor > 0) || math.IsInf(float64(opts.Divisor), 0) {
		return fmt.Errorf("%w: divisor %v (want finite and > 0)", ErrShape, opts.Divisor)
	}
	if len(s.Labels) > math.MaxUint32 {
		return fmt.Errorf("%w: %d items, at most %d fit", ErrShape, len(s.Labels), uint32(math.MaxUint32))
	}
	if opts.DType == Float32 && opts.Divisor != 1 {
		for i, v := range s.Data {
			if q := v * opts.Divisor; math.IsInf(float64(q), 0) && !math.IsInf(float64(v), 0) {
				return fmt.Errorf("%w: value %v of item %d overflows float32 when multiplied by divisor %v",
					ErrShape, v, i/s.ItemSize(), opts.Divisor)
			}
		}
	}
	var packed []byte
	if opts.DType == Uint8 {
		packed = make([]byte, len(s.Data))
		for i, v := range s.Data {
			q := float64(v) * float64(opts.Divisor)
			r := math.Round(q)
			if math.IsNaN(q) || r < 0 || r > 255 || math.Abs(q-r) > 1e-3 {
				return fmt.Errorf("%w: value %v of item %d is not k/%v for an integer k in [0,255]; store it as float32",
					ErrShape, v, i/s.ItemSize(), opts.Divisor)
			}
			packed[i] = byte(r)
		}
	}

	le := binary.LittleEndian
	bw := bufio.NewWriterSize(w, 1<<16)
	hdr := make([]byte, 0, 28+4*len(s.ItemShape))
	hdr = append(hdr, tensorMagic...)
	hdr = le.AppendUint32(hdr, tensorVersion)
	hdr = le.AppendUint32(hdr, uint32(opts.DType))
	hdr = le.AppendUint32(hdr, math.Float32bits(opts.Divisor))
	hdr = le.AppendUint32(hdr, uint32(len(s.ItemShape)))
	for _, d := range s.ItemShape {
		hdr = le.AppendUint32(hdr, uint32(d))
	}
	hdr = le.AppendUint32(hdr, uint32(len(s.Labels)))
	bw.Write(hdr)
	if packed != nil {
		bw.Write(packed)
	} else {
		var b [4]byte
		for _, v := range s.Data {
			le.PutUint32(b[:], math.Float32bits(v*opts.Divisor))
			bw.Write(b[:])
		}
	}
	var b [4]byte
	for _, l := range s.Labels {
		le.PutUint32(b[:], uint32(l))
		bw.Write(b[:])
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write tensor: %w", err)
	}
	return nil
}
