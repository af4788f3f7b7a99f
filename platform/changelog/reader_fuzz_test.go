package changelog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"slices"
	"testing"
)

// growingFile is a segment being appended to: reads stop at what has
// been written so far.
type growingFile struct {
	data []byte
	pos  int
	size int // bytes written so far
}

func (g *growingFile) Read(p []byte) (int, error) {
	if g.pos >= g.size {
		return 0, io.EOF
	}
	n := copy(p, g.data[g.pos:g.size])
	g.pos += n
	return n, nil
}

func (g *growingFile) Close() error { return nil }

// seal gives data a valid header and recomputes the checksums of its
// frames, so that the fuzzer reaches what lies behind them: a checksum
// protects against accidents, not against someone who writes the file. A
// length that reaches past the end is kept, with a valid checksum.
func seal(data []byte) []byte {
	data = slices.Clone(data)
	if len(data) < headerSize {
		return data
	}
	copy(data, appendHeader(nil, kindIncrement))
	for off := headerSize; len(data)-off >= frameSize; {
		frame := data[off:]
		binary.LittleEndian.PutUint32(frame[4:], crc32.Checksum(frame[:4], castagnoli))
		n := int(binary.LittleEndian.Uint32(frame))
		if n > len(frame)-frameSize {
			break
		}
		binary.LittleEndian.PutUint32(frame[8:], crc32.Checksum(frame[frameSize:frameSize+n], castagnoli))
		off += frameSize + n
	}
	return data
}

// FuzzSegmentCursor: the cursor Watch streams and the CDC relay read
// segments with, fed a segment that grows in arbitrary steps, never
// panics, holds no more memory than about twice what the file holds so
// far (a length prefix is a claim, not a fact, until the bytes are
// there), and returns the records the replay reader reads from the whole
// file, stopping where the replay reader finds damage.
func FuzzSegmentCursor(f *testing.F) {
	var seg []byte
	seg = appendHeader(seg, kindIncrement)
	for i, payload := range [][]byte{[]byte("one"), {}, bytes.Repeat([]byte("x"), 300)} {
		var err error
		if seg, err = appendFrame(seg, func(b []byte) ([]byte, error) { return append(b, payload...), nil }); err != nil {
			f.Fatalf("#%d: %v", i, err)
		}
	}
	f.Add(seg, []byte{}, false)
	f.Add(seg, []byte{0, 5, 11, 40}, false)
	f.Add(seg[:len(seg)-7], []byte{3}, false)
	f.Add(append(slices.Clone(seg), make([]byte, 40)...), []byte{13}, false)
	f.Add(append(slices.Clone(seg), 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0), []byte{1}, true)
	f.Fuzz(func(t *testing.T, data, steps []byte, sealed bool) {
		if sealed {
			data = seal(data)
		}
		want, wantOff, wantErr := readWhole(data)

		file := &growingFile{data: data}
		s := &segmentCursor{name: "f.aof", path: "f.aof", f: file}
		var got [][]byte
		var err error
	read:
		for i := 0; ; i++ {
			for {
				payload, ok, perr := s.peek()
				if limit := 2 * (file.size + 64<<10); cap(s.buf) > limit {
					t.Fatalf("with %d bytes written, the cursor holds a %d-byte buffer", file.size, cap(s.buf))
				}
				if perr != nil {
					err = perr
					break read
				}
				if !ok {
					break
				}
				got = append(got, slices.Clone(payload))
				s.consume()
			}
			if file.size == len(data) {
				break
			}
			step := len(data)
			if i < len(steps) {
				step = 1 + int(steps[i])
			}
			file.size = min(len(data), file.size+step)
		}

		var corrupt *CorruptError
		if errors.As(wantErr, &corrupt) && corrupt.Offset > 0 && corrupt.Offset < int64(headerSize) {
			return // a version or kind this build does not read: only replay checks them
		}
		if len(got) != len(want) {
			t.Fatalf("the cursor read %d records (stopping with %v), the replay reader %d (stopping with %v)", len(got), err, len(want), wantErr)
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("record %d: the cursor read %x, the replay reader %x", i, got[i], want[i])
			}
		}
		switch {
		case wantErr == nil && (err != nil || s.off != wantOff):
			t.Fatalf("a whole file: the cursor stopped at %d with %v, want %d", s.off, err, wantOff)
		case corrupt != nil:
			// Damage a crash cannot explain is damage to both readers.
			var found *CorruptError
			if !errors.As(err, &found) || found.Offset != corrupt.Offset {
				t.Fatalf("the replay reader found %v; the cursor %v", wantErr, err)
			}
		}
	})
}

// readWhole reads the records of a whole segment with the replay reader:
// the records, where they end, and why it stopped (nil at a clean end).
func readWhole(data []byte) ([][]byte, int64, error) {
	sr, err := newSegmentReader(bytes.NewReader(data), "f.aof", int64(len(data)))
	if err != nil {
		return nil, 0, err
	}
	var out [][]byte
	for {
		payload, err := sr.next()
		if err == io.EOF {
			return out, sr.off, nil
		}
		if err != nil {
			return out, sr.off, err
		}
		out = append(out, slices.Clone(payload))
	}
}
