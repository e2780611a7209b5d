package dataset

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
)

// decompressed returns r, transparently gunzipped if it starts with the gzip
// magic bytes.
func decompressed(r io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	head, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if len(head) == 2 && head[0] == 0x1f && head[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, classify(err)
		}
		return bufio.NewReaderSize(zr, 1<<16), nil
	}
	return br, nil
}

// classify maps read errors to the package's sentinels: an early end is
// ErrTruncated, a gzip checksum or header error is ErrCorrupt; anything else
// (an I/O error) is returned unchanged.
func classify(err error) error {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %w", ErrTruncated, io.ErrUnexpectedEOF)
	case errors.Is(err, gzip.ErrChecksum), errors.Is(err, gzip.ErrHeader):
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	default:
		return err
	}
}

// readFull reads exactly len(buf) bytes; what names the field for errors.
func readFull(r io.Reader, buf []byte, what string) error {
	if _, err := io.ReadFull(r, buf); err != nil {
		return fmt.Errorf("%s: %w", what, classify(err))
	}
	return nil
}

// readPayload reads exactly n bytes. It grows its buffer as data arrives, so a
// header that announces more than the file holds costs no more memory than
// the file.
func readPayload(r io.Reader, n int64, what string) ([]byte, error) {
	buf, err := io.ReadAll(io.LimitReader(r, n))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, classify(err))
	}
	if int64(len(buf)) < n {
		return nil, fmt.Errorf("%s: %w: got %d of %d bytes", what, ErrTruncated, len(buf), n)
	}
	return buf, nil
}

// expectEOF checks that r has nothing left. Reading to the end also makes a
// gzip reader verify its checksum.
func expectEOF(r io.Reader) error {
	var b [1]byte
	for {
		n, err := r.Read(b[:])
		if n > 0 {
			return fmt.Errorf("%w: trailing data after the announced content", ErrCorrupt)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return classify(err)
		}
	}
}
