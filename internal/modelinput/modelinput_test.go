package modelinput

import (
	"errors"
	"slices"
	"testing"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

const scale = 1.0 / 255

// items returns a data set of 3 items of 4 pixels read as an IDX file is
// (values byte/255, bytes kept).
func items() *dataset.Set {
	raw := []uint8{0, 255, 51, 102, 1, 2, 3, 4, 254, 253, 252, 128}
	s := &dataset.Set{ItemShape: []int64{2, 2}, Labels: []int32{0, 1, 2}, Bytes: raw, ByteDivisor: 255}
	for _, b := range raw {
		s.Data = append(s.Data, float32(b)/255)
	}
	return s
}

// TestSameItemSameModelInput: an item given as a data set's stored bytes
// (replay), as a UINT8 request (live), as a FP32 request of the byte values
// scaled (live), or as the data set's float values, reaches a UINT8 model as
// the same bytes, and a FP32 model as the same floats whenever it is bytes.
func TestSameItemSameModelInput(t *testing.T) {
	set := items()
	for _, typ := range []string{FP32, UINT8} {
		tr, err := New("m", typ, 4, scale)
		if err != nil {
			t.Fatal(err)
		}
		for i := range set.Len() {
			raw := set.ItemBytes(i)
			scaled := make([]float32, len(raw))
			for k, b := range raw {
				scaled[k] = float32(b) * float32(scale)
			}
			forms := map[string]func(*Batch) error{
				"data set item (replay)": func(b *Batch) error { return tr.AppendItem(b, set, i) },
				"data set bytes":         func(b *Batch) error { return tr.AppendBytes(b, raw) },
				"UINT8 request": func(b *Batch) error {
					return tr.AppendTensor(b, wire.Tensor{Datatype: wire.UINT8, Shape: []int64{2, 2}, Data: raw})
				},
				"FP32 request of b×scale": func(b *Batch) error {
					return tr.AppendTensor(b, wire.FP32Tensor([]int64{2, 2}, scaled))
				},
			}
			if typ == UINT8 {
				// Values b/255 (the IDX loader's) are bytes too for a UINT8
				// model; a FP32 model takes them as they are.
				forms["FP32 request of b/255"] = func(b *Batch) error { return tr.AppendTensor(b, wire.FP32Tensor([]int64{2, 2}, set.Item(i))) }
				forms["data set floats"] = func(b *Batch) error { return tr.AppendFloats(b, set.Item(i)) }
			}
			var want *Batch
			for name, add := range forms {
				var b Batch
				if err := add(&b); err != nil {
					t.Fatalf("%s model, item %d as %s: %v", typ, i, name, err)
				}
				if tr.Len(&b) != 1 {
					t.Fatalf("%s model, item %d as %s: %d items", typ, i, name, tr.Len(&b))
				}
				if typ == UINT8 && (len(b.U8) != 4 || !slices.Equal(b.U8, raw)) {
					t.Errorf("UINT8 model, item %d as %s: bytes %v, want %v", i, name, b.U8, raw)
				}
				if typ == FP32 && !slices.Equal(b.F32, scaled) {
					t.Errorf("FP32 model, item %d as %s: %v, want %v", i, name, b.F32, scaled)
				}
				if want == nil {
					want = &b
				} else if !slices.Equal(want.F32, b.F32) || !slices.Equal(want.U8, b.U8) {
					t.Errorf("%s model, item %d: %s gives %v%v, another form %v%v", typ, i, name, b.F32, b.U8, want.F32, want.U8)
				}
			}
		}
	}
}

func TestFloatModelTakesFloatsAsTheyAre(t *testing.T) {
	tr, err := New("m", FP32, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b Batch
	vals := []float32{-1.5, 0.25, 1e6}
	if err := tr.AppendTensor(&b, wire.FP32Tensor([]int64{3}, vals)); err != nil {
		t.Fatal(err)
	}
	if err := tr.AppendFloats(&b, vals); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b.F32, append(slices.Clone(vals), vals...)) || tr.Len(&b) != 2 || !slices.Equal(tr.Slice(&b, 1, 2).F32, vals) {
		t.Fatalf("batch %v", b.F32)
	}
	// Without a UINT8 scale, bytes mean nothing.
	if err := tr.AppendBytes(&b, []uint8{1, 2, 3}); !errors.Is(err, ErrInvalidItem) {
		t.Fatalf("bytes without a scale: %v, want ErrInvalidItem", err)
	}
}

// TestUint8ModelRefusesFloatsThatAreNotBytes: a FP32 item reaches a UINT8
// model only when every value is a byte times the scale; otherwise it is
// refused and the batch is left as it was.
func TestUint8ModelRefusesFloatsThatAreNotBytes(t *testing.T) {
	tr, err := New("digits", UINT8, 3, scale)
	if err != nil {
		t.Fatal(err)
	}
	var b Batch
	if err := tr.AppendBytes(&b, []uint8{9, 8, 7}); err != nil {
		t.Fatal(err)
	}
	for _, vals := range [][]float32{
		{0, 0.5, 1},             // 0.5 is 127.5 × 1/255
		{0, 1.01, 0},            // above 255 × 1/255
		{-1.0 / 255, 0, 0},      // negative
		{0, 0, float32(0.0021)}, // 0.5355 × 1/255
	} {
		err := tr.AppendTensor(&b, wire.FP32Tensor([]int64{3}, vals))
		if !errors.Is(err, ErrNotBytes) {
			t.Errorf("%v: %v, want ErrNotBytes", vals, err)
		}
		if err := tr.AppendFloats(&b, vals); !errors.Is(err, ErrNotBytes) {
			t.Errorf("AppendFloats %v: %v, want ErrNotBytes", vals, err)
		}
		if !slices.Equal(b.U8, []uint8{9, 8, 7}) {
			t.Fatalf("batch changed by a refused item: %v", b.U8)
		}
	}
	// The values the IDX loader and producers compute are bytes.
	if err := tr.AppendTensor(&b, wire.FP32Tensor([]int64{3}, []float32{0, 128.0 / 255, 1})); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b.U8, []uint8{9, 8, 7, 0, 128, 255}) {
		t.Fatalf("batch %v", b.U8)
	}
	b.Reset()
	if tr.Len(&b) != 0 {
		t.Fatal("Reset left items")
	}
}

func TestItemErrors(t *testing.T) {
	tr, _ := New("m", UINT8, 4, scale)
	var b Batch
	for name, x := range map[string]wire.Tensor{
		"short UINT8":   {Datatype: wire.UINT8, Data: []byte{1, 2, 3}},
		"short FP32":    wire.FP32Tensor(nil, []float32{0, 0, 0}),
		"INT64":         {Datatype: "INT64", Data: make([]byte, 32)},
		"FP32 as UINT8": {Datatype: wire.UINT8, Data: make([]byte, 16)},
	} {
		if err := tr.AppendTensor(&b, x); !errors.Is(err, ErrInvalidItem) {
			t.Errorf("%s: %v, want ErrInvalidItem", name, err)
		}
	}
	if len(b.U8) != 0 || len(b.F32) != 0 {
		t.Fatalf("refused items left values: %v %v", b.U8, b.F32)
	}
}

func TestNew(t *testing.T) {
	if _, err := New("big", UINT8, 4, 0); !errors.Is(err, ErrConfig) {
		t.Errorf("UINT8 model without a scale: %v, want ErrConfig", err)
	}
	if _, err := New("m", "INT64", 4, scale); !errors.Is(err, ErrConfig) {
		t.Errorf("INT64 model: %v, want ErrConfig", err)
	}
	if _, err := New("m", FP32, 4, -1); !errors.Is(err, ErrConfig) {
		t.Errorf("negative scale: %v, want ErrConfig", err)
	}
	if _, err := New("m", FP32, 4, 0); err != nil {
		t.Errorf("FP32 model without a scale: %v", err)
	}
}

// fakeRunner records which entry point a batch went to.
type fakeRunner struct {
	f32 []float32
	u8  []uint8
	n   int
}

func (f *fakeRunner) Run(in []float32, n int, dst []float32) ([]float32, error) {
	f.f32, f.n = in, n
	return dst, nil
}

func (f *fakeRunner) RunUint8(in []uint8, n int, dst []float32) ([]float32, error) {
	f.u8, f.n = in, n
	return dst, nil
}

func TestRunPicksTheModelsEntryPoint(t *testing.T) {
	set := items()
	for _, typ := range []string{FP32, UINT8} {
		tr, _ := New("m", typ, 4, scale)
		var b Batch
		for i := range set.Len() {
			if err := tr.AppendItem(&b, set, i); err != nil {
				t.Fatal(err)
			}
		}
		var r fakeRunner
		if _, err := tr.Run(&r, &b, nil); err != nil {
			t.Fatal(err)
		}
		if r.n != 3 || (typ == UINT8) != (r.u8 != nil) || (typ == FP32) != (r.f32 != nil) {
			t.Errorf("%s model: ran %d items, floats %v bytes %v", typ, r.n, r.f32, r.u8)
		}
	}
}

// BenchmarkAppendBytes: one MNIST-sized UINT8 item into an FP32 batch of
// 128 items, the stage worker's conversion.
func BenchmarkAppendBytes(b *testing.B) {
	tr, err := New("m", FP32, 784, 1.0/255)
	if err != nil {
		b.Fatal(err)
	}
	raw := make([]uint8, 784)
	for i := range raw {
		raw[i] = uint8(i)
	}
	var batch Batch
	b.SetBytes(int64(len(raw)))
	for i := 0; b.Loop(); i++ {
		if i%128 == 0 {
			batch.F32 = batch.F32[:0]
		}
		if err := tr.AppendBytes(&batch, raw); err != nil {
			b.Fatal(err)
		}
	}
}
