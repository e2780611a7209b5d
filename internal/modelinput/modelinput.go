// Package modelinput turns a pipeline's items into a model's input. It is
// the one input transform that `cascadeserve replay`, `cascadeserve profile`
// and the stage workers share, so that a model receives the same values
// offline, where its accuracy is measured and planned on, and online.
//
// A pipeline's item is a tensor of FP32 values or of UINT8 bytes; a byte b
// stands for the value b × Scale, where Scale is the pipeline's UINT8 scale
// (plan.Input.UINT8Scale, recorded in the plan and, by replay, in the replay
// file). A data set stored as bytes (IDX files, uint8 tensor files) gives
// UINT8 items. A model takes float32 or uint8 input (onnxrt.ModelInfo):
//
//	model  item   model input
//	FP32   FP32   the values as they are
//	FP32   UINT8  float32(b) × Scale
//	UINT8  UINT8  the bytes as they are
//	UINT8  FP32   v / Scale, only when every v is k × Scale for an integer k
//	              in [0, 255] (within float rounding: |v/Scale − k| ≤ 1e-3);
//	              otherwise the item is refused (ErrNotBytes)
//
// A UINT8 model needs Scale > 0 (New refuses one without). Nothing else
// converts between floats and bytes: onnxrt's Run takes float32 items for
// float32 models and RunUint8 bytes for uint8 models.
package modelinput

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// Model input types, as onnxrt.ModelInfo.InputType reports them.
const (
	FP32  = wire.FP32
	UINT8 = wire.UINT8
)

// Errors, returned wrapped with the model and what was found.
var (
	// ErrConfig: the model cannot be fed from the pipeline (an unknown
	// input type, a UINT8 model without a UINT8 scale).
	ErrConfig = errors.New("model input cannot be built")
	// ErrInvalidItem: the item has the wrong datatype or number of values.
	ErrInvalidItem = errors.New("invalid item")
	// ErrNotBytes: a FP32 item for a UINT8 model holds a value that is not
	// a byte times the scale.
	ErrNotBytes = errors.New("FP32 item is not bytes times the UINT8 scale")
)

// byteTolerance is how far from an integer v/Scale may be, in units of the
// scale, for a FP32 value to be taken as a byte (float rounding of b×Scale
// or b/divisor stays far below it).
const byteTolerance = 1e-3

// Transform turns items into the input of one model.
type Transform struct {
	// Model names the model in errors.
	Model string
	// Type is the model's input type, FP32 or UINT8.
	Type string
	// ItemSize is the number of values of one item.
	ItemSize int
	// Scale is the pipeline's UINT8 scale: a byte b stands for b × Scale.
	// 0: the pipeline has no byte form (UINT8 items are refused).
	Scale float32
}

// New returns the transform of a model whose input type is inputType
// (onnxrt.ModelInfo.InputType) with itemSize values per item, in a
// pipeline whose UINT8 scale is uint8Scale (0 for none).
func New(model, inputType string, itemSize int, uint8Scale float64) (Transform, error) {
	t := Transform{Model: model, Type: inputType, ItemSize: itemSize, Scale: float32(uint8Scale)}
	switch {
	case inputType != FP32 && inputType != UINT8:
		return Transform{}, fmt.Errorf("model %q: input type %q (want %s or %s): %w", model, inputType, FP32, UINT8, ErrConfig)
	case itemSize < 1:
		return Transform{}, fmt.Errorf("model %q: item size %d: %w", model, itemSize, ErrConfig)
	case !(uint8Scale >= 0) || math.IsInf(uint8Scale, 0) || uint8Scale > 0 && t.Scale == 0:
		return Transform{}, fmt.Errorf("model %q: UINT8 scale %v (want finite, >= 0): %w", model, uint8Scale, ErrConfig)
	case inputType == UINT8 && uint8Scale == 0:
		return Transform{}, fmt.Errorf("model %q takes UINT8 input but the pipeline has no UINT8 scale "+
			"(plan input.uint8_scale, replay --uint8-scale): what a byte stands for is unknown, so its items cannot be turned into the model's bytes: %w",
			model, ErrConfig)
	}
	return t, nil
}

// Batch is a batch of model inputs, item after item, in the model's input
// type: F32 for a FP32 model, U8 for a UINT8 model. The zero value is an
// empty batch of either type; Reset keeps the buffers.
type Batch struct {
	F32 []float32
	U8  []uint8
}

// Reset empties the batch, keeping its buffers.
func (b *Batch) Reset() {
	b.F32, b.U8 = b.F32[:0], b.U8[:0]
}

// Len returns the number of items in b for the transform's item size.
func (t Transform) Len(b *Batch) int {
	if t.Type == UINT8 {
		return len(b.U8) / t.ItemSize
	}
	return len(b.F32) / t.ItemSize
}

// Slice returns items [from, to) of b as a batch sharing its memory.
func (t Transform) Slice(b *Batch, from, to int) Batch {
	if t.Type == UINT8 {
		return Batch{U8: b.U8[from*t.ItemSize : to*t.ItemSize]}
	}
	return Batch{F32: b.F32[from*t.ItemSize : to*t.ItemSize]}
}

// AppendTensor appends the model input of one item to b. The tensor's
// shape is not checked (the pipeline checks it); its datatype and number of
// values are. On error b is unchanged.
func (t Transform) AppendTensor(b *Batch, x wire.Tensor) error {
	switch x.Datatype {
	case wire.UINT8:
		return t.AppendBytes(b, x.Data)
	case wire.FP32:
		if len(x.Data) != 4*t.ItemSize {
			return fmt.Errorf("model %q: FP32 item of %d bytes, want %d values (%d bytes): %w",
				t.Model, len(x.Data), t.ItemSize, 4*t.ItemSize, ErrInvalidItem)
		}
		if t.Type == FP32 {
			var err error
			b.F32, err = x.AppendFloat32s(b.F32, 0)
			return err
		}
		n := len(b.F32)
		vals, err := x.AppendFloat32s(b.F32, 0)
		if err != nil {
			return err
		}
		b.F32 = vals[:n] // the decoded values are scratch space past the batch's floats
		return t.appendAsBytes(b, vals[n:])
	}
	return fmt.Errorf("model %q: item datatype %q (want %s or %s): %w", t.Model, x.Datatype, wire.FP32, wire.UINT8, ErrInvalidItem)
}

// AppendBytes appends the model input of one item given as bytes (a UINT8
// item, or a data set's stored bytes), each standing for byte × Scale.
func (t Transform) AppendBytes(b *Batch, raw []uint8) error {
	if len(raw) != t.ItemSize {
		return fmt.Errorf("model %q: UINT8 item of %d values, want %d: %w", t.Model, len(raw), t.ItemSize, ErrInvalidItem)
	}
	if t.Scale == 0 {
		return fmt.Errorf("model %q: a UINT8 item but the pipeline has no UINT8 scale: %w", t.Model, ErrInvalidItem)
	}
	if t.Type == UINT8 {
		b.U8 = append(b.U8, raw...)
		return nil
	}
	n := len(b.F32)
	b.F32 = slices.Grow(b.F32, len(raw))[:n+len(raw)]
	dst := b.F32[n : n+len(raw)]
	for i, v := range raw {
		dst[i] = float32(v) * t.Scale
	}
	return nil
}

// AppendFloats appends the model input of one item given as FP32 values.
func (t Transform) AppendFloats(b *Batch, values []float32) error {
	if len(values) != t.ItemSize {
		return fmt.Errorf("model %q: FP32 item of %d values, want %d: %w", t.Model, len(values), t.ItemSize, ErrInvalidItem)
	}
	if t.Type == FP32 {
		b.F32 = append(b.F32, values...)
		return nil
	}
	return t.appendAsBytes(b, values)
}

// AppendItem appends the model input of item i of a data set: its stored
// bytes when it has them (a UINT8 item, as a producer sends the same image
// as UINT8), else its FP32 values.
func (t Transform) AppendItem(b *Batch, s *dataset.Set, i int) error {
	if raw := s.ItemBytes(i); raw != nil {
		return t.AppendBytes(b, raw)
	}
	return t.AppendFloats(b, s.Item(i))
}

// appendAsBytes appends FP32 values to a UINT8 model's batch as v / Scale,
// refusing values that are not a byte times the scale. On error b is
// unchanged.
func (t Transform) appendAsBytes(b *Batch, values []float32) error {
	n := len(b.U8)
	scale := float64(t.Scale)
	for i, v := range values {
		q := float64(v) / scale
		k := math.Round(q)
		if !(k >= 0 && k <= 255) || math.Abs(q-k) > byteTolerance {
			b.U8 = b.U8[:n]
			return fmt.Errorf("model %q takes UINT8 input and value %d of the item, %v, is not a byte times the pipeline's UINT8 scale %v "+
				"(send UINT8, or FP32 values k×%v for integers k in [0,255]): %w", t.Model, i, v, t.Scale, t.Scale, ErrNotBytes)
		}
		b.U8 = append(b.U8, uint8(k))
	}
	return nil
}

// Runner runs a batch of a model: onnxrt.Session.
type Runner interface {
	Run(input []float32, n int, dst []float32) ([]float32, error)
	RunUint8(input []uint8, n int, dst []float32) ([]float32, error)
}

// Run runs the n items of b through the model and writes their
// probabilities into dst (see onnxrt.Session.Run).
func (t Transform) Run(r Runner, b *Batch, dst []float32) ([]float32, error) {
	if t.Type == UINT8 {
		return r.RunUint8(b.U8, len(b.U8)/t.ItemSize, dst)
	}
	return r.Run(b.F32, len(b.F32)/t.ItemSize, dst)
}
