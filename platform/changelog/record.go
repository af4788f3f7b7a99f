package changelog

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// File layout. Every segment starts with a header: the 8-byte magic, then
// the format version and the segment kind as little-endian uint32s. Records
// follow back to back, each a 12-byte frame and a payload: the payload's
// length, the CRC-32C of those 4 length bytes, and the CRC-32C of the
// payload, all little-endian uint32s; then the payload, a
// flux.cdc.v1.ChangeEvent in protobuf binary. The length has a checksum of
// its own so that a damaged length is recognised as damage, not mistaken
// for a record that a crash cut short.
const (
	magic         = "FLUXAOF\n"
	formatVersion = 1
	headerSize    = len(magic) + 8
	frameSize     = 12

	// MaxRecordBytes bounds a record's payload. A larger length prefix is
	// corruption, so a hostile or damaged file never makes the reader
	// allocate more than this.
	MaxRecordBytes = 256 << 20
)

// Segment kinds, recorded in the header.
const (
	kindIncrement uint32 = 1 // records appended as changes happen
	kindBase      uint32 = 2 // a snapshot of live keys written by a rewrite
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errTorn is a record cut short by a crash: it reaches past the end of the
// file, or it is the last record and its checksum does not match.
var errTorn = errors.New("torn record")

// CorruptError reports damage that a crash cannot explain: a bad record
// with more data after it, a bad header, or an impossible length.
type CorruptError struct {
	File   string
	Offset int64
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%s: corrupt at byte offset %d: %s", e.File, e.Offset, e.Reason)
}

func appendHeader(b []byte, kind uint32) []byte {
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint32(b, formatVersion)
	return binary.LittleEndian.AppendUint32(b, kind)
}

// appendFrame reserves a frame header in b, lets marshal append the payload,
// then fills in the length and checksum.
func appendFrame(b []byte, marshal func([]byte) ([]byte, error)) ([]byte, error) {
	start := len(b)
	b = append(b, make([]byte, frameSize)...)
	b, err := marshal(b)
	if err != nil {
		return b[:start], err
	}
	n := len(b) - start - frameSize
	if n > MaxRecordBytes {
		return b[:start], fmt.Errorf("record of %d bytes is over the %d-byte limit", n, MaxRecordBytes)
	}
	binary.LittleEndian.PutUint32(b[start:], uint32(n))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(b[start:start+4], castagnoli))
	binary.LittleEndian.PutUint32(b[start+8:], crc32.Checksum(b[start+frameSize:], castagnoli))
	return b, nil
}

// segmentReader reads the records of one segment of known size.
type segmentReader struct {
	r      *bufio.Reader
	name   string
	size   int64
	off    int64 // offset of the next record
	kind   uint32
	buf    []byte
	frame  [frameSize]byte
	header [headerSize]byte
}

func newSegmentReader(r io.Reader, name string, size int64) (*segmentReader, error) {
	sr := &segmentReader{r: bufio.NewReaderSize(r, 1<<16), name: name, size: size}
	if size < int64(headerSize) {
		return sr, errTorn
	}
	if _, err := io.ReadFull(sr.r, sr.header[:]); err != nil {
		return nil, fmt.Errorf("read %s header: %w", name, err)
	}
	if string(sr.header[:len(magic)]) != magic {
		return nil, &CorruptError{File: name, Offset: 0, Reason: "not a Flux-KV log segment (bad magic)"}
	}
	if v := binary.LittleEndian.Uint32(sr.header[len(magic):]); v != formatVersion {
		return nil, &CorruptError{File: name, Offset: int64(len(magic)), Reason: fmt.Sprintf("format version %d, this build reads %d", v, formatVersion)}
	}
	sr.kind = binary.LittleEndian.Uint32(sr.header[len(magic)+4:])
	if sr.kind != kindIncrement && sr.kind != kindBase {
		return nil, &CorruptError{File: name, Offset: int64(len(magic) + 4), Reason: fmt.Sprintf("unknown segment kind %d", sr.kind)}
	}
	sr.off = int64(headerSize)
	return sr, nil
}

// next returns the next record's payload, valid until the following call.
// It returns io.EOF at a clean end, errTorn for a torn last record (off is
// then where the whole records end), and a *CorruptError otherwise. A tail
// of zero bytes, which a file system can leave where unsynced appends were
// lost, counts as torn.
func (sr *segmentReader) next() ([]byte, error) {
	remaining := sr.size - sr.off
	if remaining == 0 {
		return nil, io.EOF
	}
	if remaining < frameSize {
		return nil, errTorn
	}
	if _, err := io.ReadFull(sr.r, sr.frame[:]); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", sr.name, sr.off, err)
	}
	if crc32.Checksum(sr.frame[:4], castagnoli) != binary.LittleEndian.Uint32(sr.frame[4:]) {
		if isZero(sr.frame[:]) && sr.restIsZero() {
			return nil, errTorn
		}
		return nil, &CorruptError{File: sr.name, Offset: sr.off, Reason: "record length checksum mismatch"}
	}
	n := int64(binary.LittleEndian.Uint32(sr.frame[:4]))
	if n > MaxRecordBytes {
		return nil, &CorruptError{File: sr.name, Offset: sr.off, Reason: fmt.Sprintf("record length %d is over the %d-byte limit", n, MaxRecordBytes)}
	}
	if frameSize+n > remaining {
		return nil, errTorn
	}
	if int64(cap(sr.buf)) < n {
		sr.buf = make([]byte, n)
	}
	payload := sr.buf[:n]
	if _, err := io.ReadFull(sr.r, payload); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", sr.name, sr.off, err)
	}
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(sr.frame[8:]) {
		if frameSize+n == remaining {
			return nil, errTorn
		}
		return nil, &CorruptError{File: sr.name, Offset: sr.off, Reason: "record checksum mismatch"}
	}
	sr.off += frameSize + n
	return payload, nil
}

// restIsZero reports whether every byte after the current frame is zero.
func (sr *segmentReader) restIsZero() bool {
	chunk := make([]byte, 64<<10)
	for {
		n, err := sr.r.Read(chunk)
		if !isZero(chunk[:n]) {
			return false
		}
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
