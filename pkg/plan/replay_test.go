package plan_test

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/plantest"
)

func TestReplayRoundTrip(t *testing.T) {
	r := plantest.SmallReplay(t)
	path := filepath.Join(t.TempDir(), "replay.bin.gz")
	if err := r.WriteFile(path); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	got, err := plan.ReadReplayFile(path)
	if err != nil {
		t.Fatalf("ReadReplayFile: %v", err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatal("replay changed in a write/read round trip")
	}
	sub, err := got.Subset([]string{"small"})
	if err != nil {
		t.Fatalf("Subset: %v", err)
	}
	if len(sub.Models) != 1 || len(sub.Probs) != 1 || sub.Row("small", 7)[2] != r.Row("small", 7)[2] {
		t.Errorf("Subset = %+v", sub.Models)
	}
	if _, err := got.Subset([]string{"ghost"}); !errors.Is(err, plan.ErrBadReplay) {
		t.Errorf("Subset(ghost) = %v, want ErrBadReplay", err)
	}
}

// TestReplayRecordsInput: a replay that records its input (item shape,
// UINT8 scale) is written as version 2 and reads back with it; one that
// records none is written as version 1, as before.
func TestReplayRecordsInput(t *testing.T) {
	r := plantest.SmallReplay(t)
	if v := binary.LittleEndian.Uint32(rawReplay(t, r)[8:]); v != 1 {
		t.Fatalf("replay without input written as version %d, want 1", v)
	}
	r.ItemShape, r.UINT8Scale = []int64{28, 28}, 1.0/255
	raw := rawReplay(t, r)
	if v := binary.LittleEndian.Uint32(raw[8:]); v != 2 {
		t.Fatalf("replay with input written as version %d, want 2", v)
	}
	got, err := plan.ReadReplay(bytes.NewReader(gz(t, raw)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("input %v %v read back as %v %v", r.ItemShape, r.UINT8Scale, got.ItemShape, got.UINT8Scale)
	}
	sub, err := got.Subset([]string{"small"})
	if err != nil || !reflect.DeepEqual(sub.ItemShape, r.ItemShape) || sub.UINT8Scale != r.UINT8Scale {
		t.Fatalf("Subset lost the input: %v %v (%v)", sub.ItemShape, sub.UINT8Scale, err)
	}
	r.UINT8Scale = -1
	if err := r.Validate(); !errors.Is(err, plan.ErrBadReplay) {
		t.Fatalf("negative scale: %v, want ErrBadReplay", err)
	}
}

// rawReplay returns the uncompressed bytes of a written replay.
func rawReplay(t *testing.T, r *plan.Replay) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := r.Write(&buf); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func gz(t *testing.T, raw []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadReplayRejectsCorruption(t *testing.T) {
	r := plantest.SmallReplay(t)
	raw := rawReplay(t, r)
	le := binary.LittleEndian
	mutate := func(f func(b []byte) []byte) []byte {
		return gz(t, f(bytes.Clone(raw)))
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"not gzip", []byte("CSREPLAY plain"), "not gzip"},
		{"empty", gz(t, nil), "header"},
		{"magic", mutate(func(b []byte) []byte { copy(b, "NOTMAGIC"); return b }), "magic"},
		{"version", mutate(func(b []byte) []byte { le.PutUint32(b[8:], 99); return b }), "version 99"},
		{"zero items", mutate(func(b []byte) []byte { le.PutUint32(b[12:], 0); return b }), "implausible header"},
		{"one class", mutate(func(b []byte) []byte { le.PutUint32(b[16:], 1); return b }), "implausible header"},
		{"huge", mutate(func(b []byte) []byte { le.PutUint32(b[12:], 1<<31); return b }), "implausible header"},
		{"truncated probabilities", mutate(func(b []byte) []byte { return b[:len(b)-5] }), "probabilities of"},
		{"truncated labels", mutate(func(b []byte) []byte { return b[:40] }), "labels"},
		{"label out of range", mutate(func(b []byte) []byte {
			off := 24 + 2 + len("tiny") + 2 + len("small")
			le.PutUint32(b[off:], 9)
			return b
		}), "label 9 outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := plan.ReadReplay(bytes.NewReader(tt.data))
			if !errors.Is(err, plan.ErrBadReplay) {
				t.Fatalf("ReadReplay = %v, want ErrBadReplay", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestReplayValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(r *plan.Replay)
		want   string
	}{
		{"no items", func(r *plan.Replay) { r.Labels = nil }, "no items"},
		{"no models", func(r *plan.Replay) { r.Models = nil; r.Probs = map[string][]float32{} }, "no models"},
		{"short probabilities", func(r *plan.Replay) { r.Probs["tiny"] = r.Probs["tiny"][:10] }, `model "tiny" has 10 probabilities`},
		{"unlisted", func(r *plan.Replay) { r.Probs["ghost"] = nil }, `unlisted model "ghost"`},
		{"duplicate", func(r *plan.Replay) { r.Models = append(r.Models, "tiny") }, `"tiny" listed twice`},
		{"bad label", func(r *plan.Replay) { r.Labels[3] = -1 }, "item 3 has label -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := plantest.SmallReplay(t)
			tt.mutate(r)
			err := r.Validate()
			if !errors.Is(err, plan.ErrBadReplay) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate = %v, want ErrBadReplay mentioning %q", err, tt.want)
			}
		})
	}
}
