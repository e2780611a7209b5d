package dataset

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
)

// IDX element type codes (the third byte of the magic number).
const (
	idxUint8   = 0x08
	idxInt8    = 0x09
	idxInt16   = 0x0B
	idxInt32   = 0x0C
	idxFloat32 = 0x0D
	idxFloat64 = 0x0E
)

// idxFile is a decoded IDX header plus its raw big-endian payload.
type idxFile struct {
	dtype byte
	dims  []int64
	data  []byte
}

// ReadIDXFiles reads an IDX images file and an IDX labels file, each plain or
// gzip-compressed; see ReadIDX.
func ReadIDXFiles(imagesPath, labelsPath string, itemShape []int64) (*Set, error) {
	images, err := os.Open(imagesPath)
	if err != nil {
		return nil, fmt.Errorf("read idx: %w", err)
	}
	defer images.Close()
	labels, err := os.Open(labelsPath)
	if err != nil {
		return nil, fmt.Errorf("read idx: %w", err)
	}
	defer labels.Close()
	s, err := readIDX(images, imagesPath, labels, labelsPath, itemShape)
	if err != nil {
		return nil, fmt.Errorf("read idx: %w", err)
	}
	return s, nil
}

// ReadIDX reads a data set from an IDX items stream (rank >= 2: the first
// axis counts items) and an IDX labels stream (rank 1), each plain or
// gzip-compressed. Items of unsigned bytes are scaled to [0,1] (value/255)
// and also kept as bytes (Set.Bytes, ByteDivisor 255); float32 items are
// kept as they are; labels may be unsigned bytes or int32.
// The two files must hold the same number of items.
//
// The items are given itemShape, whose product must equal the number of
// values per item in the file; a nil itemShape keeps the file's item axes
// (for the MNIST files [28, 28]; models usually want [1, 28, 28]).
func ReadIDX(images, labels io.Reader, itemShape []int64) (*Set, error) {
	s, err := readIDX(images, "images", labels, "labels", itemShape)
	if err != nil {
		return nil, fmt.Errorf("read idx: %w", err)
	}
	return s, nil
}

func readIDX(images io.Reader, imagesName string, labels io.Reader, labelsName string, itemShape []int64) (*Set, error) {
	img, err := decodeIDX(images)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", imagesName, err)
	}
	lab, err := decodeIDX(labels)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", labelsName, err)
	}
	if len(img.dims) < 2 {
		return nil, fmt.Errorf("%s: %w: items file has rank %d, want >= 2 (items × item axes)", imagesName, ErrShape, len(img.dims))
	}
	if len(lab.dims) != 1 {
		return nil, fmt.Errorf("%s: %w: labels file has rank %d, want 1", labelsName, ErrShape, len(lab.dims))
	}
	if img.dims[0] != lab.dims[0] {
		return nil, fmt.Errorf("%w: %s has %d items but %s has %d labels", ErrShape, imagesName, img.dims[0], labelsName, lab.dims[0])
	}
	n := int(img.dims[0])
	if n == 0 {
		return nil, fmt.Errorf("%s: %w: no items", imagesName, ErrShape)
	}
	s := &Set{ItemShape: img.dims[1:], Labels: make([]int32, n)}
	if s.Data, err = idxValues(img); err != nil {
		return nil, fmt.Errorf("%s: %w", imagesName, err)
	}
	if img.dtype == idxUint8 {
		s.Bytes, s.ByteDivisor = img.data, 255
	}
	switch lab.dtype {
	case idxUint8:
		for i, b := range lab.data {
			s.Labels[i] = int32(b)
		}
	case idxInt32:
		for i := range s.Labels {
			l := int32(binary.BigEndian.Uint32(lab.data[4*i:]))
			if l < 0 {
				return nil, fmt.Errorf("%s: %w: label %d of item %d is negative", labelsName, ErrCorrupt, l, i)
			}
			s.Labels[i] = l
		}
	default:
		return nil, fmt.Errorf("%s: %w: IDX labels of element type 0x%02x (want 0x08 unsigned byte or 0x0C int32)", labelsName, ErrUnsupported, lab.dtype)
	}
	if itemShape != nil {
		if s, err = s.Reshape(itemShape); err != nil {
			return nil, fmt.Errorf("%s: %w", imagesName, err)
		}
	}
	return s, nil
}

// idxValues converts an IDX payload of unsigned bytes or float32 to float32.
func idxValues(f *idxFile) ([]float32, error) {
	switch f.dtype {
	case idxUint8:
		out := make([]float32, len(f.data))
		for i, b := range f.data {
			out[i] = float32(b) / 255
		}
		return out, nil
	case idxFloat32:
		out := make([]float32, len(f.data)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.BigEndian.Uint32(f.data[4*i:]))
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w: IDX items of element type 0x%02x (want 0x08 unsigned byte or 0x0D float32)", ErrUnsupported, f.dtype)
	}
}

// decodeIDX reads one IDX stream: the magic number (two zero bytes, the
// element type, the rank), rank big-endian uint32 dimensions, the values.
func decodeIDX(r io.Reader) (*idxFile, error) {
	r, err := decompressed(r)
	if err != nil {
		return nil, err
	}
	var magic [4]byte
	if err := readFull(r, magic[:], "magic number"); err != nil {
		return nil, err
	}
	if magic[0] != 0 || magic[1] != 0 {
		return nil, fmt.Errorf("%w: magic number % x is not IDX (want 00 00 <type> <rank>)", ErrCorrupt, magic)
	}
	var size int64
	switch magic[2] {
	case idxUint8, idxInt8:
		size = 1
	case idxInt16:
		size = 2
	case idxInt32, idxFloat32:
		size = 4
	case idxFloat64:
		size = 8
	default:
		return nil, fmt.Errorf("%w: unknown IDX element type 0x%02x", ErrCorrupt, magic[2])
	}
	rank := int(magic[3])
	if rank == 0 || rank > maxRank+1 {
		return nil, fmt.Errorf("%w: IDX rank %d (want 1..%d)", ErrCorrupt, rank, maxRank+1)
	}
	raw := make([]byte, 4*rank)
	if err := readFull(r, raw, "dimensions"); err != nil {
		return nil, err
	}
	f := &idxFile{dtype: magic[2], dims: make([]int64, rank)}
	count := int64(1)
	for i := range f.dims {
		d := int64(binary.BigEndian.Uint32(raw[4*i:]))
		if d == 0 && i > 0 {
			return nil, fmt.Errorf("%w: IDX dimension %d is 0", ErrCorrupt, i)
		}
		f.dims[i] = d
		count *= d
		if count > maxValues {
			return nil, fmt.Errorf("%w: IDX dimensions %v announce more than %d values", ErrCorrupt, f.dims[:i+1], int64(maxValues))
		}
	}
	if f.data, err = readPayload(r, count*size, "values"); err != nil {
		return nil, err
	}
	if err := expectEOF(r); err != nil {
		return nil, err
	}
	return f, nil
}
