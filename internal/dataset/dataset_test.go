package dataset

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"testing"
)

// idxBytes builds an IDX stream of the given element type, dims and payload.
func idxBytes(t *testing.T, dtype byte, dims []uint32, payload []byte) []byte {
	t.Helper()
	b := []byte{0, 0, dtype, byte(len(dims))}
	for _, d := range dims {
		b = binary.BigEndian.AppendUint32(b, d)
	}
	return append(b, payload...)
}

func gz(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// smallIDX returns 3 items of 2×2 unsigned-byte pixels and their labels.
func smallIDX(t *testing.T) (images, labels []byte) {
	t.Helper()
	px := []byte{0, 255, 51, 102, 1, 2, 3, 4, 254, 253, 252, 251}
	return idxBytes(t, idxUint8, []uint32{3, 2, 2}, px), idxBytes(t, idxUint8, []uint32{3}, []byte{7, 0, 9})
}

func TestReadIDX(t *testing.T) {
	images, labels := smallIDX(t)
	want := &Set{
		ItemShape: []int64{1, 2, 2},
		Labels:    []int32{7, 0, 9},
	}
	for _, b := range []byte{0, 255, 51, 102, 1, 2, 3, 4, 254, 253, 252, 251} {
		want.Data = append(want.Data, float32(b)/255)
	}
	floats := idxBytes(t, idxFloat32, []uint32{3, 4}, func() []byte {
		var b []byte
		for _, v := range want.Data {
			b = binary.BigEndian.AppendUint32(b, math.Float32bits(v))
		}
		return b
	}())
	int32Labels := idxBytes(t, idxInt32, []uint32{3}, []byte{0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 9})

	tests := []struct {
		name           string
		images, labels []byte
		shape          []int64
		wantShape      []int64
	}{
		{"raw", images, labels, []int64{1, 2, 2}, []int64{1, 2, 2}},
		{"gzip", gz(t, images), gz(t, labels), []int64{1, 2, 2}, []int64{1, 2, 2}},
		{"file shape", images, labels, nil, []int64{2, 2}},
		{"flat", images, labels, []int64{4}, []int64{4}},
		{"float32 items, int32 labels", floats, int32Labels, []int64{1, 2, 2}, []int64{1, 2, 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ReadIDX(bytes.NewReader(tc.images), bytes.NewReader(tc.labels), tc.shape)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(s.ItemShape, tc.wantShape) || !slices.Equal(s.Data, want.Data) || !slices.Equal(s.Labels, want.Labels) {
				t.Fatalf("got %+v, want shape %v data %v labels %v", s, tc.wantShape, want.Data, want.Labels)
			}
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestReadIDXErrors(t *testing.T) {
	images, labels := smallIDX(t)
	corruptGzip := gz(t, images)
	corruptGzip[len(corruptGzip)-6] ^= 0xff // CRC-32 of the trailer

	tests := []struct {
		name           string
		images, labels []byte
		shape          []int64
		want           error
	}{
		{"empty images", nil, labels, nil, ErrTruncated},
		{"short magic", images[:3], labels, nil, ErrTruncated},
		{"short dims", images[:9], labels, nil, ErrTruncated},
		{"short payload", images[:len(images)-1], labels, nil, ErrTruncated},
		{"short labels", images, labels[:len(labels)-1], nil, ErrTruncated},
		{"truncated gzip", gz(t, images)[:30], labels, nil, ErrTruncated},
		{"gzip checksum", corruptGzip, labels, nil, ErrCorrupt},
		{"trailing data", append(slices.Clone(images), 0), labels, nil, ErrCorrupt},
		{"bad magic", append([]byte{1}, images[1:]...), labels, nil, ErrCorrupt},
		{"unknown type", idxBytes(t, 0x42, []uint32{3, 2, 2}, make([]byte, 12)), labels, nil, ErrCorrupt},
		{"rank 0", []byte{0, 0, idxUint8, 0}, labels, nil, ErrCorrupt},
		{"huge dims", idxBytes(t, idxUint8, []uint32{1 << 30, 1 << 30}, nil), labels, nil, ErrCorrupt},
		{"int16 items", idxBytes(t, idxInt16, []uint32{3, 2}, make([]byte, 12)), labels, nil, ErrUnsupported},
		{"float32 labels", images, idxBytes(t, idxFloat32, []uint32{3}, make([]byte, 12)), nil, ErrUnsupported},
		{"negative label", images, idxBytes(t, idxInt32, []uint32{3}, bytes.Repeat([]byte{0xff}, 12)), nil, ErrCorrupt},
		{"count mismatch", images, idxBytes(t, idxUint8, []uint32{2}, []byte{1, 2}), nil, ErrShape},
		{"rank-1 images", labels, labels, nil, ErrShape},
		{"rank-2 labels", images, images, nil, ErrShape},
		{"no items", idxBytes(t, idxUint8, []uint32{0, 2}, nil), idxBytes(t, idxUint8, []uint32{0}, nil), nil, ErrShape},
		{"wrong shape", images, labels, []int64{1, 3, 3}, ErrShape},
		{"zero dim shape", images, labels, []int64{0, 4}, ErrShape},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ReadIDX(bytes.NewReader(tc.images), bytes.NewReader(tc.labels), tc.shape)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got set %v, error %v; want error wrapping %v", s, err, tc.want)
			}
		})
	}
}

func TestSetSliceReshape(t *testing.T) {
	images, labels := smallIDX(t)
	s, err := ReadIDX(bytes.NewReader(images), bytes.NewReader(labels), []int64{1, 2, 2})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Item(1); !slices.Equal(got, []float32{1.0 / 255, 2.0 / 255, 3.0 / 255, 4.0 / 255}) {
		t.Fatalf("Item(1) = %v", got)
	}
	tests := []struct {
		from, to int
		ok       bool
	}{
		{0, 3, true}, {1, 2, true}, {2, 3, true},
		{0, 0, false}, {2, 1, false}, {-1, 2, false}, {0, 4, false},
	}
	for _, tc := range tests {
		sub, err := s.Slice(tc.from, tc.to)
		if !tc.ok {
			if !errors.Is(err, ErrShape) {
				t.Errorf("Slice(%d,%d): error %v, want ErrShape", tc.from, tc.to, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Slice(%d,%d): %v", tc.from, tc.to, err)
		}
		if sub.Len() != tc.to-tc.from || !slices.Equal(sub.Item(0), s.Item(tc.from)) || sub.Labels[0] != s.Labels[tc.from] {
			t.Errorf("Slice(%d,%d) = %+v", tc.from, tc.to, sub)
		}
		// Appending to a slice must not overwrite the parent's next item.
		_ = append(sub.Data, -1)
		if tc.to < s.Len() && s.Item(tc.to)[0] == -1 {
			t.Errorf("Slice(%d,%d) shares capacity with the parent", tc.from, tc.to)
		}
	}
}

func TestTensorRoundTrip(t *testing.T) {
	images, labels := smallIDX(t)
	pixels, err := ReadIDX(bytes.NewReader(images), bytes.NewReader(labels), []int64{1, 2, 2})
	if err != nil {
		t.Fatal(err)
	}
	arbitrary := &Set{
		ItemShape: []int64{3},
		Data:      []float32{-1.5, 0, float32(math.Pi), 1e-30, 3e38, -0.1},
		Labels:    []int32{0, 12345},
	}
	tests := []struct {
		name string
		set  *Set
		opts TensorOptions
		gzip bool
	}{
		{"float32 defaults", arbitrary, TensorOptions{}, false},
		{"float32 divisor 0.5", arbitrary, TensorOptions{DType: Float32, Divisor: 0.5}, false},
		{"float32 gzip", arbitrary, TensorOptions{}, true},
		{"uint8 pixels", pixels, TensorOptions{DType: Uint8, Divisor: 255}, false},
		{"uint8 pixels gzip", pixels, TensorOptions{DType: Uint8, Divisor: 255}, true},
		{"float32 pixels", pixels, TensorOptions{DType: Float32}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteTensor(&buf, tc.set, tc.opts); err != nil {
				t.Fatal(err)
			}
			b := buf.Bytes()
			if tc.gzip {
				b = gz(t, b)
			}
			got, err := ReadTensor(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.ItemShape, tc.set.ItemShape) || !slices.Equal(got.Data, tc.set.Data) || !slices.Equal(got.Labels, tc.set.Labels) {
				t.Fatalf("round trip: got %+v, want %+v", got, tc.set)
			}
		})
	}
}

func TestTensorFileRoundTrip(t *testing.T) {
	s := &Set{ItemShape: []int64{2, 1}, Data: []float32{1, 2, 3, 4}, Labels: []int32{1, 0}}
	for _, name := range []string{"d.cstensor", "d.cstensor.gz"} {
		path := filepath.Join(t.TempDir(), name)
		if err := WriteTensorFile(path, s, TensorOptions{DType: Uint8}); err != nil {
			t.Fatal(err)
		}
		got, err := ReadTensorFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Data, s.Data) || !slices.Equal(got.Labels, s.Labels) || !slices.Equal(got.ItemShape, s.ItemShape) {
			t.Fatalf("%s: got %+v, want %+v", name, got, s)
		}
	}
}

func TestWriteTensorErrors(t *testing.T) {
	tests := []struct {
		name string
		set  *Set
		opts TensorOptions
		want error
	}{
		{"not a byte", &Set{ItemShape: []int64{1}, Data: []float32{0.5}, Labels: []int32{0}}, TensorOptions{DType: Uint8}, ErrShape},
		{"above 255", &Set{ItemShape: []int64{1}, Data: []float32{256}, Labels: []int32{0}}, TensorOptions{DType: Uint8}, ErrShape},
		{"negative", &Set{ItemShape: []int64{1}, Data: []float32{-1}, Labels: []int32{0}}, TensorOptions{DType: Uint8}, ErrShape},
		{"NaN", &Set{ItemShape: []int64{1}, Data: []float32{float32(math.NaN())}, Labels: []int32{0}}, TensorOptions{DType: Uint8}, ErrShape},
		{"float32 overflow", &Set{ItemShape: []int64{1}, Data: []float32{3e38}, Labels: []int32{0}}, TensorOptions{Divisor: 4}, ErrShape},
		{"bad divisor", &Set{ItemShape: []int64{1}, Data: []float32{1}, Labels: []int32{0}}, TensorOptions{Divisor: -1}, ErrShape},
		{"bad dtype", &Set{ItemShape: []int64{1}, Data: []float32{1}, Labels: []int32{0}}, TensorOptions{DType: 9}, ErrUnsupported},
		{"data size", &Set{ItemShape: []int64{2}, Data: []float32{1}, Labels: []int32{0}}, TensorOptions{}, ErrShape},
		{"no items", &Set{ItemShape: []int64{2}}, TensorOptions{}, ErrShape},
		{"negative label", &Set{ItemShape: []int64{1}, Data: []float32{1}, Labels: []int32{-2}}, TensorOptions{}, ErrShape},
		{"no shape", &Set{Data: []float32{1}, Labels: []int32{0}}, TensorOptions{}, ErrShape},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteTensor(&buf, tc.set, tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if buf.Len() != 0 {
				t.Fatalf("wrote %d bytes despite the error", buf.Len())
			}
		})
	}
}

func TestReadTensorErrors(t *testing.T) {
	s := &Set{ItemShape: []int64{2, 2}, Data: []float32{1, 2, 3, 4, 5, 6, 7, 8}, Labels: []int32{3, 4}}
	var buf bytes.Buffer
	if err := WriteTensor(&buf, s, TensorOptions{}); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	// Header offsets: magic 0, version 8, dtype 12, divisor 16, rank 20,
	// dims 24 and 28, n 32, data 36, labels 68.
	patch := func(off int, v uint32) []byte {
		b := slices.Clone(good)
		binary.LittleEndian.PutUint32(b[off:], v)
		return b
	}
	tests := []struct {
		name string
		file []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short header", good[:20], ErrTruncated},
		{"short dims", good[:30], ErrTruncated},
		{"short data", good[:50], ErrTruncated},
		{"short labels", good[:len(good)-2], ErrTruncated},
		{"truncated gzip", gz(t, good)[:len(gz(t, good))-10], ErrTruncated},
		{"trailing data", append(slices.Clone(good), 1, 2, 3, 4), ErrCorrupt},
		{"bad magic", append([]byte("CSTENSOX"), good[8:]...), ErrCorrupt},
		{"newer version", patch(8, 2), ErrUnsupported},
		{"bad dtype", patch(12, 7), ErrCorrupt},
		{"zero divisor", patch(16, 0), ErrCorrupt},
		{"NaN divisor", patch(16, math.Float32bits(float32(math.NaN()))), ErrCorrupt},
		{"infinite divisor", patch(16, math.Float32bits(float32(math.Inf(1)))), ErrCorrupt},
		{"rank 0", patch(20, 0), ErrCorrupt},
		{"rank 9", patch(20, 9), ErrCorrupt},
		{"zero dim", patch(24, 0), ErrCorrupt},
		{"zero items", patch(32, 0), ErrCorrupt},
		{"more items than data", patch(32, 3), ErrTruncated},
		{"huge count", patch(32, math.MaxUint32), ErrCorrupt},
		{"negative label", patch(68, math.MaxUint32), ErrCorrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadTensor(bytes.NewReader(tc.file))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, error %v; want error wrapping %v", got, err, tc.want)
			}
		})
	}
}

// TestReadMNISTTestFiles reads the committed MNIST test files and checks
// facts about them published with the data set.
func TestReadMNISTTestFiles(t *testing.T) {
	dir := filepath.Join("..", "..", "models", "mnist", "data")
	s, err := ReadIDXFiles(filepath.Join(dir, "t10k-images-idx3-ubyte.gz"), filepath.Join(dir, "t10k-labels-idx1-ubyte.gz"), []int64{1, 28, 28})
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 10000 || len(s.Data) != 10000*784 {
		t.Fatalf("got %d items, %d values", s.Len(), len(s.Data))
	}
	counts := make([]int, 10)
	for _, l := range s.Labels {
		counts[l]++
	}
	// Class counts of the MNIST test set.
	if want := []int{980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009}; !slices.Equal(counts, want) {
		t.Fatalf("class counts %v, want %v", counts, want)
	}
	if s.Labels[0] != 7 || s.Labels[1] != 2 || s.Labels[2] != 1 {
		t.Fatalf("first labels %v, want 7 2 1", s.Labels[:3])
	}
	lo, hi := slices.Min(s.Data), slices.Max(s.Data)
	if lo != 0 || hi != 1 {
		t.Fatalf("pixel range [%v,%v], want [0,1]", lo, hi)
	}
}

// TestStoredBytesKept: sets read from unsigned-byte IDX files and uint8
// tensor files keep the stored bytes and their divisor, through Slice and
// Reshape; float32 files have none.
func TestStoredBytesKept(t *testing.T) {
	images, labels := smallIDX(t)
	px := []byte{0, 255, 51, 102, 1, 2, 3, 4, 254, 253, 252, 251}
	s, err := ReadIDX(bytes.NewReader(images), bytes.NewReader(labels), []int64{4})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Bytes, px) || s.ByteDivisor != 255 {
		t.Fatalf("IDX bytes %v divisor %v, want %v 255", s.Bytes, s.ByteDivisor, px)
	}
	for i, b := range s.Bytes {
		if s.Data[i] != float32(b)/s.ByteDivisor {
			t.Fatalf("value %d: %v is not byte %d / %v", i, s.Data[i], b, s.ByteDivisor)
		}
	}
	part, err := s.Slice(1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if part, err = part.Reshape([]int64{2, 2}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(part.ItemBytes(1), px[8:12]) || part.ByteDivisor != 255 || part.Validate() != nil {
		t.Fatalf("sliced, reshaped item 1 bytes %v divisor %v, want %v 255", part.ItemBytes(1), part.ByteDivisor, px[8:12])
	}

	var buf bytes.Buffer
	ten := &Set{ItemShape: []int64{2}, Data: []float32{0, 1.5, 2, 127.5}, Labels: []int32{0, 1}}
	if err := WriteTensor(&buf, ten, TensorOptions{DType: Uint8, Divisor: 2}); err != nil {
		t.Fatal(err)
	}
	got, err := ReadTensor(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Bytes, []uint8{0, 3, 4, 255}) || got.ByteDivisor != 2 {
		t.Fatalf("uint8 tensor file bytes %v divisor %v, want [0 3 4 255] 2", got.Bytes, got.ByteDivisor)
	}
	buf.Reset()
	if err := WriteTensor(&buf, ten, TensorOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err = ReadTensor(bytes.NewReader(buf.Bytes())); err != nil || got.Bytes != nil || got.ItemBytes(0) != nil {
		t.Fatalf("float32 tensor file: bytes %v (err %v), want none", got.Bytes, err)
	}
}
