package wire

import (
	"bytes"
	"fmt"
	"sync"
)

// Codec encodes and decodes messages, reusing buffers. It is safe for
// concurrent use; the []byte returned by an Encode call is a fresh copy the
// caller owns (NATS publishes keep a reference until flushed).
type Codec struct {
	pool sync.Pool
}

// encState is a pooled scratch buffer of the hand-written codec
// (fastcodec.go).
type encState struct {
	out []byte
}

// NewCodec returns a Codec.
func NewCodec() *Codec {
	c := &Codec{}
	c.pool.New = func() any { return &encState{} }
	return c
}

// encodeFast runs a hand-written appender on a pooled scratch buffer and
// returns an exact-size copy.
func (c *Codec) encodeFast(write func(b []byte) []byte) []byte {
	s := c.pool.Get().(*encState)
	defer c.pool.Put(s)
	s.out = write(s.out[:0])
	return bytes.Clone(s.out)
}

// EncodeRequest encodes a request (setting V).
func (c *Codec) EncodeRequest(r *Request) ([]byte, error) {
	r.V = Version
	return c.encodeFast(func(b []byte) []byte { return appendRequest(b, r) }), nil
}

// EncodeItem encodes an in-flight item (setting V).
func (c *Codec) EncodeItem(it *Item) ([]byte, error) {
	it.V = Version
	return c.encodeFast(func(b []byte) []byte { return appendItem(b, it) }), nil
}

// EncodeResult encodes a result (setting V).
func (c *Codec) EncodeResult(r *Result) ([]byte, error) {
	r.V = Version
	return c.encodeFast(func(b []byte) []byte { return appendResult(b, r) }), nil
}

// Result formats, the values of Item.ResultFormat.
const (
	// ResultFormatMsgpack (the zero value): a msgpack Result, Content-Type
	// ContentTypeMsgpack.
	ResultFormatMsgpack = ""
	// ResultFormatJSON: the OIP v2 JSON response body (EncodeOIPResponse;
	// an error result is {"id", "error", "code"}), Content-Type
	// ContentTypeJSON.
	ResultFormatJSON = "json"
)

// ResultFormatFor returns the result format that answers a request sent
// with the given Content-Type: JSON for a JSON request (IsJSON), else
// msgpack.
func ResultFormatFor(contentType string) string {
	if IsJSON(contentType) {
		return ResultFormatJSON
	}
	return ResultFormatMsgpack
}

// EncodeResultAs encodes a result in format (setting V) and returns the
// body and its Content-Type: the OIP v2 JSON response body for model
// r.Pipeline with ContentTypeJSON for ResultFormatJSON, else a msgpack
// Result with ContentTypeMsgpack. A format this build does not know is
// written as msgpack, so a result is never lost to it.
func (c *Codec) EncodeResultAs(r *Result, format string) (body []byte, contentType string, err error) {
	r.V = Version
	if format == ResultFormatJSON {
		b, err := EncodeOIPResponse(r, r.Pipeline)
		if err != nil {
			return nil, "", err
		}
		return b, ContentTypeJSON, nil
	}
	return c.encodeFast(func(b []byte) []byte { return appendResult(b, r) }), ContentTypeMsgpack, nil
}

// DecodeResultBody decodes a result by its Content-Type header: the OIP v2
// JSON response (or error) body when contentType selects JSON (IsJSON),
// else a msgpack Result. A JSON body carries less than a msgpack one: its
// visits are model names only, without the latency breakdown.
func DecodeResultBody(contentType string, b []byte, r *Result) error {
	if IsJSON(contentType) {
		return DecodeOIPResponse(b, r)
	}
	return DecodeResult(b, r)
}

// DecodeRequest decodes a msgpack request. A missing version (0) is taken
// as the current one, so hand-written producers need not set it. The
// input's bytes share b's memory: b must not be modified while the request
// is in use.
func DecodeRequest(b []byte, r *Request) error {
	d := mpReader{b: b}
	if err := d.readRequest(r); err != nil {
		return Errorf(CodeInvalidInput, "decode msgpack request: %v", err)
	}
	if r.V != 0 && r.V != Version {
		return Errorf(CodeInvalidInput, "%v: request version %d, this build reads %d", ErrVersion, r.V, Version)
	}
	if err := CheckOutputs(r.Outputs); err != nil {
		return err
	}
	r.ReturnProbabilities = r.WantsProbabilities()
	return nil
}

// DecodeItem decodes an in-flight item. Its input's bytes share b's
// memory: b must not be modified while the item is in use.
func DecodeItem(b []byte, it *Item) error {
	r := mpReader{b: b}
	if err := r.readItem(it); err != nil {
		return fmt.Errorf("decode item: %w", err)
	}
	if it.V != Version {
		return fmt.Errorf("decode item: %w: %d", ErrVersion, it.V)
	}
	return nil
}

// DecodeResult decodes a result.
func DecodeResult(b []byte, r *Result) error {
	d := mpReader{b: b}
	if err := d.readResult(r, 0); err != nil {
		return fmt.Errorf("decode result: %w", err)
	}
	if r.V != Version {
		return fmt.Errorf("decode result: %w: %d", ErrVersion, r.V)
	}
	return nil
}

// maxMsgpackDepth bounds the nesting of arrays and maps in a message; ours
// nest three deep.
const maxMsgpackDepth = 32
