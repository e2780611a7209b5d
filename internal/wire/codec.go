package wire

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// Codec encodes and decodes messages, reusing buffers. It is safe for
// concurrent use; the []byte returned by an Encode call is a fresh copy the
// caller owns (NATS publishes keep a reference until flushed).
type Codec struct {
	pool sync.Pool
}

type encState struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

// NewCodec returns a Codec.
func NewCodec() *Codec {
	c := &Codec{}
	c.pool.New = func() any {
		s := &encState{}
		s.enc = msgpack.NewEncoder(&s.buf)
		s.enc.UseCompactInts(true)
		return s
	}
	return c
}

func (c *Codec) encode(v any) ([]byte, error) {
	s := c.pool.Get().(*encState)
	defer c.pool.Put(s)
	s.buf.Reset()
	if err := s.enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.Clone(s.buf.Bytes()), nil
}

// EncodeRequest encodes a request (setting V).
func (c *Codec) EncodeRequest(r *Request) ([]byte, error) {
	r.V = Version
	return c.encode(r)
}

// EncodeItem encodes an in-flight item (setting V).
func (c *Codec) EncodeItem(it *Item) ([]byte, error) {
	it.V = Version
	return c.encode(it)
}

// EncodeResult encodes a result (setting V).
func (c *Codec) EncodeResult(r *Result) ([]byte, error) {
	r.V = Version
	return c.encode(r)
}

// DecodeRequest decodes a msgpack request. A missing version (0) is taken
// as the current one, so hand-written producers need not set it.
func DecodeRequest(b []byte, r *Request) error {
	if err := msgpack.Unmarshal(b, r); err != nil {
		return Errorf(CodeInvalidInput, "decode msgpack request: %v", err)
	}
	if r.V != 0 && r.V != Version {
		return Errorf(CodeInvalidInput, "%v: request version %d, this build reads %d", ErrVersion, r.V, Version)
	}
	return nil
}

// DecodeItem decodes an in-flight item.
func DecodeItem(b []byte, it *Item) error {
	if err := msgpack.Unmarshal(b, it); err != nil {
		return fmt.Errorf("decode item: %w", err)
	}
	if it.V != Version {
		return fmt.Errorf("decode item: %w: %d", ErrVersion, it.V)
	}
	return nil
}

// DecodeResult decodes a result.
func DecodeResult(b []byte, r *Result) error {
	if err := msgpack.Unmarshal(b, r); err != nil {
		return fmt.Errorf("decode result: %w", err)
	}
	if r.V != Version {
		return fmt.Errorf("decode result: %w: %d", ErrVersion, r.V)
	}
	return nil
}
