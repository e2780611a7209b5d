package wire

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The msgpack primitives of the hand-written codec (fastcodec.go): writers
// that append to a byte slice and a reader over one, with no reflection, no
// interface calls and no allocation beyond the strings and slices the
// decoded value keeps. They write exactly what msgpack/v5's Encoder writes
// with UseCompactInts(true) (TestFastCodecMatchesReflection), and read what
// its Decoder reads for the same kinds.

// appendLen writes a length header: n in the low bits of fix while it is
// below fixMax, then after the code c8 (when there is one: 0 is none), c16
// or c32 in the fewest bytes.
func appendLen(b []byte, n int, fix byte, fixMax int, c8, c16, c32 byte) []byte {
	switch {
	case n < fixMax:
		return append(b, fix|byte(n))
	case c8 != 0 && n < 256:
		return append(b, c8, byte(n))
	case n <= math.MaxUint16:
		return append(b, c16, byte(n>>8), byte(n))
	}
	return append(b, c32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func appendMapLen(b []byte, n int) []byte { return appendLen(b, n, 0x80, 16, 0, 0xde, 0xdf) }

func appendArrayLen(b []byte, n int) []byte { return appendLen(b, n, 0x90, 16, 0, 0xdc, 0xdd) }

func appendStr(b []byte, s string) []byte {
	return append(appendLen(b, len(s), 0xa0, 32, 0xd9, 0xda, 0xdb), s...)
}

// appendBin writes v as msgpack bin; nil is nil.
func appendBin(b []byte, v []byte) []byte {
	if v == nil {
		return append(b, 0xc0)
	}
	return append(appendLen(b, len(v), 0, 0, 0xc4, 0xc5, 0xc6), v...)
}

// appendInt writes n in the fewest bytes, as msgpack/v5's compact ints.
func appendInt(b []byte, n int64) []byte {
	if n >= 0 {
		u := uint64(n)
		switch {
		case u <= math.MaxInt8:
			return append(b, byte(u))
		case u <= math.MaxUint8:
			return append(b, 0xcc, byte(u))
		case u <= math.MaxUint16:
			return append(b, 0xcd, byte(u>>8), byte(u))
		case u <= math.MaxUint32:
			return append(b, 0xce, byte(u>>24), byte(u>>16), byte(u>>8), byte(u))
		}
		return binary.BigEndian.AppendUint64(append(b, 0xcf), u)
	}
	switch {
	case n >= -32:
		return append(b, byte(n))
	case n >= math.MinInt8:
		return append(b, 0xd0, byte(n))
	case n >= math.MinInt16:
		return append(b, 0xd1, byte(n>>8), byte(n))
	case n >= math.MinInt32:
		return append(b, 0xd2, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(n))
}

func appendFloat64(b []byte, f float64) []byte {
	return binary.BigEndian.AppendUint64(append(b, 0xcb), math.Float64bits(f))
}

func appendFloat32(b []byte, f float32) []byte {
	return binary.BigEndian.AppendUint32(append(b, 0xca), math.Float32bits(f))
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xc3)
	}
	return append(b, 0xc2)
}

// appendFloat32s writes v as an array of float32 (nil as nil).
func appendFloat32s(b []byte, v []float32) []byte {
	if v == nil {
		return append(b, 0xc0)
	}
	b = appendArrayLen(b, len(v))
	for _, x := range v {
		b = appendFloat32(b, x)
	}
	return b
}

// mpReader reads msgpack values from b. Every length it reads is checked
// against the bytes left, and every element count too (an element takes at
// least a byte), so a short message claiming a huge array fails before
// anything is allocated for it. Byte strings it returns share b's memory.
type mpReader struct {
	b []byte
	i int
	// syms holds the last few short strings read by sym: the model, gear,
	// pipeline and client names that repeat in every item of an envelope
	// or a batched result are allocated once per message, not per item.
	syms [8]string
	next int
}

func (r *mpReader) errShort(n int) error {
	return fmt.Errorf("msgpack value at byte %d claims %d bytes, %d left", r.i, n, len(r.b)-r.i)
}

func (r *mpReader) code() (byte, error) {
	if r.i >= len(r.b) {
		return 0, r.errShort(1)
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

func (r *mpReader) peek() (byte, error) {
	if r.i >= len(r.b) {
		return 0, r.errShort(1)
	}
	return r.b[r.i], nil
}

func (r *mpReader) take(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.i {
		return nil, r.errShort(n)
	}
	v := r.b[r.i : r.i+n : r.i+n]
	r.i += n
	return v, nil
}

// uint reads a big-endian unsigned integer of size bytes.
func (r *mpReader) uint(size int) (uint64, error) {
	v, err := r.take(size)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range v {
		n = n<<8 | uint64(c)
	}
	return n, nil
}

// count reads a length of size bytes and checks that what it counts (of at
// least unit bytes each) fits in the bytes left.
func (r *mpReader) count(size, unit int) (int, error) {
	n, err := r.uint(size)
	if err != nil {
		return 0, err
	}
	if n > uint64(len(r.b)-r.i)/uint64(unit) {
		return 0, fmt.Errorf("msgpack length %d at byte %d exceeds the %d bytes left", n, r.i, len(r.b)-r.i)
	}
	return int(n), nil
}

// mapLen reads a map header; nil is -1.
func (r *mpReader) mapLen() (int, error) { return r.header(0x80, 0xde, 2, "map") }

// arrayLen reads an array header; nil is -1.
func (r *mpReader) arrayLen() (int, error) { return r.header(0x90, 0xdc, 1, "array") }

// header reads a map or array header, whose fix form holds the count in
// the low four bits of fix and whose 16- and 32-bit forms are c16 and
// c16+1, for elements of at least unit bytes each; nil is -1.
func (r *mpReader) header(fix, c16 byte, unit int, kind string) (int, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	switch {
	case c == 0xc0:
		return -1, nil
	case c >= fix && c <= fix|0x0f:
		n := int(c & 0x0f)
		if unit*n > len(r.b)-r.i {
			return 0, r.errShort(unit * n)
		}
		return n, nil
	case c == c16:
		return r.count(2, unit)
	case c == c16+1:
		return r.count(4, unit)
	}
	return 0, fmt.Errorf("msgpack: invalid code=%x decoding %s length", c, kind)
}

// raw reads a str or bin value's bytes (shared with the message); nil is
// nil.
func (r *mpReader) raw() ([]byte, error) {
	c, err := r.code()
	if err != nil || c == 0xc0 {
		return nil, err
	}
	n, ok, err := r.rawLen(c)
	if !ok {
		return nil, fmt.Errorf("msgpack: invalid code=%x decoding string/bytes length", c)
	}
	if err != nil {
		return nil, err
	}
	return r.take(n)
}

// rawLen reads the length of the str or bin value whose code is c; ok is
// false when c is not one.
func (r *mpReader) rawLen(c byte) (n int, ok bool, err error) {
	switch {
	case c >= 0xa0 && c <= 0xbf:
		return int(c & 0x1f), true, nil
	case c == 0xd9 || c == 0xc4:
		n, err = r.count(1, 1)
	case c == 0xda || c == 0xc5:
		n, err = r.count(2, 1)
	case c == 0xdb || c == 0xc6:
		n, err = r.count(4, 1)
	default:
		return 0, false, nil
	}
	return n, true, err
}

func (r *mpReader) str() (string, error) {
	v, err := r.raw()
	return string(v), err
}

// sym reads a string that likely repeats within the message (a name, not
// an id), reusing an earlier copy of it when there is one.
func (r *mpReader) sym() (string, error) {
	v, err := r.raw()
	if err != nil || len(v) == 0 {
		return "", err
	}
	for _, s := range r.syms {
		if s == string(v) {
			return s, nil
		}
	}
	s := string(v)
	r.syms[r.next] = s
	r.next = (r.next + 1) % len(r.syms)
	return s, nil
}

// bin reads bytes shared with the message: the caller must not modify
// them, and they live as long as the message does. An empty bin is a
// non-nil empty slice, as msgpack/v5 decodes it.
func (r *mpReader) bin() ([]byte, error) {
	return r.raw()
}

func (r *mpReader) int() (int64, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	return r.intCode(c)
}

func (r *mpReader) intCode(c byte) (int64, error) {
	switch {
	case c <= 0x7f || c >= 0xe0:
		return int64(int8(c)), nil
	case c == 0xc0:
		return 0, nil
	case c >= 0xcc && c <= 0xcf:
		n, err := r.uint(1 << (c - 0xcc))
		return int64(n), err
	case c >= 0xd0 && c <= 0xd3:
		size := 1 << (c - 0xd0)
		n, err := r.uint(size)
		if err != nil {
			return 0, err
		}
		shift := 64 - 8*size
		return int64(n<<shift) >> shift, nil
	}
	return 0, fmt.Errorf("msgpack: invalid code=%x decoding int64", c)
}

func (r *mpReader) float64() (float64, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	switch c {
	case 0xca:
		n, err := r.uint(4)
		return float64(math.Float32frombits(uint32(n))), err
	case 0xcb:
		n, err := r.uint(8)
		return math.Float64frombits(n), err
	}
	return intAsFloat[float64](r, c, "float64")
}

func (r *mpReader) float32() (float32, error) {
	c, err := r.code()
	if err != nil {
		return 0, err
	}
	if c == 0xca {
		n, err := r.uint(4)
		return math.Float32frombits(uint32(n)), err
	}
	return intAsFloat[float32](r, c, "float32")
}

// intAsFloat reads the integer whose code is c where a float is expected,
// as msgpack/v5 does.
func intAsFloat[F float32 | float64](r *mpReader, c byte, kind string) (F, error) {
	n, err := r.intCode(c)
	if err != nil {
		return 0, fmt.Errorf("msgpack: invalid code=%x decoding %s", c, kind)
	}
	return F(n), nil
}

func (r *mpReader) bool() (bool, error) {
	c, err := r.code()
	if err != nil {
		return false, err
	}
	switch c {
	case 0xc0, 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	}
	return false, fmt.Errorf("msgpack: invalid code=%x decoding bool", c)
}

// nilNext consumes a nil and reports true if the next value is one.
func (r *mpReader) nilNext() bool {
	if r.i < len(r.b) && r.b[r.i] == 0xc0 {
		r.i++
		return true
	}
	return false
}

// skip passes over one value of any kind, nested at most maxMsgpackDepth
// deep.
func (r *mpReader) skip() error { return r.skipDepth(0) }

func (r *mpReader) skipDepth(depth int) error {
	if depth >= maxMsgpackDepth {
		return fmt.Errorf("msgpack nesting deeper than %d", maxMsgpackDepth)
	}
	c, err := r.code()
	if err != nil {
		return err
	}
	elems, n := 0, 0
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return nil
	case c >= 0x80 && c <= 0x8f:
		elems = 2 * int(c&0x0f)
	case c >= 0x90 && c <= 0x9f:
		elems = int(c & 0x0f)
	case c >= 0xa0 && c <= 0xbf, c >= 0xc4 && c <= 0xc6, c >= 0xd9 && c <= 0xdb: // str, bin
		n, _, err = r.rawLen(c)
	case c == 0xc7, c == 0xc8, c == 0xc9: // ext 8/16/32: length, type, data
		n, err = r.count(1<<(c-0xc7), 1)
		n++
	case c == 0xca:
		n = 4
	case c == 0xcb:
		n = 8
	case c >= 0xcc && c <= 0xcf:
		n = 1 << (c - 0xcc)
	case c >= 0xd0 && c <= 0xd3:
		n = 1 << (c - 0xd0)
	case c >= 0xd4 && c <= 0xd8: // fixext 1..16, plus the type byte
		n = 1<<(c-0xd4) + 1
	case c == 0xdc:
		elems, err = r.count(2, 1)
	case c == 0xdd:
		elems, err = r.count(4, 1)
	case c == 0xde:
		elems, err = r.count(2, 2)
		elems *= 2
	case c == 0xdf:
		elems, err = r.count(4, 2)
		elems *= 2
	default: // 0xc1 is never used
		return fmt.Errorf("invalid msgpack code 0x%x at byte %d", c, r.i-1)
	}
	if err != nil {
		return err
	}
	if _, err := r.take(n); err != nil {
		return err
	}
	for range elems {
		if err := r.skipDepth(depth + 1); err != nil {
			return err
		}
	}
	return nil
}

// fields calls field for every key of a map (nil decodes as empty); keys
// share the message's memory and are valid only during the call.
func (r *mpReader) fields(field func(key []byte) error) error {
	n, err := r.mapLen()
	if err != nil {
		return err
	}
	for range max(n, 0) {
		key, err := r.raw()
		if err != nil {
			return err
		}
		if err := field(key); err != nil {
			return fmt.Errorf("field %q: %w", key, err)
		}
	}
	return nil
}
