package changelog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math"
	"slices"
)

// Oldest is the oldest revision a reader can start from: older events were
// replaced by a rewrite's snapshot.
func (l *Log) Oldest() int64 {
	l.manMu.Lock()
	defer l.manMu.Unlock()
	return l.man.oldest()
}

// Durable is the highest revision readers can see: the last change that is
// as durable as the policy promises writers.
func (l *Log) Durable() int64 { return l.durable() }

// NewReader returns a reader of the events after revision after, or a
// *CompactedError if the log no longer holds some of them. Until it is
// closed, the reader keeps the log from dropping events it has not read.
func (l *Log) NewReader(after int64) (*Reader, error) {
	// Registered before the check, so a rewrite cannot drop the events in
	// between.
	r := &Reader{tail: l.tail, log: l, pos: after}
	l.tail.mu.Lock()
	l.tail.readers[r] = struct{}{}
	l.tail.mu.Unlock()
	if oldest := l.Oldest(); after+1 < oldest {
		r.Close()
		return nil, &CompactedError{Oldest: oldest}
	}
	return r, nil
}

// doneWith is the highest revision every reader has finished with: events
// up to it may be dropped. It is MaxInt64 when there are no readers.
func (l *Log) doneWith() int64 {
	done := int64(math.MaxInt64)
	if l.cfg.retention != nil {
		done = l.cfg.retention()
	}
	l.tail.mu.Lock()
	floor := l.tail.floorLocked()
	l.tail.mu.Unlock()
	if floor >= 0 {
		done = min(done, floor)
	}
	return done
}

// openAt opens the segment holding the event of revision rev, or the one
// it will be appended to.
func (l *Log) openAt(rev int64) (*segmentCursor, error) {
	l.manMu.Lock()
	files, oldest := l.man.eventFiles(), l.man.oldest()
	l.manMu.Unlock()
	if rev < oldest {
		return nil, &CompactedError{Oldest: oldest}
	}
	// The last segment whose first event is at or before rev; segments
	// without events yet (a fresh active one) are passed over.
	for i := len(files) - 1; i >= 0; i-- {
		first, ok, err := l.firstRevision(files[i])
		if err != nil {
			return nil, err
		}
		if ok && first <= rev {
			return l.openSegment(files[i])
		}
	}
	return l.openSegment(files[0])
}

// firstRevision reads the revision of a segment's first event.
func (l *Log) firstRevision(name string) (int64, bool, error) {
	s, err := l.openSegment(name)
	if err != nil {
		return 0, false, err
	}
	defer s.close()
	payload, ok, err := s.peek()
	if err != nil || !ok {
		return 0, false, err
	}
	c, err := decodeChange(payload)
	if err != nil {
		return 0, false, &CorruptError{File: s.path, Offset: s.off, Reason: err.Error()}
	}
	return c.Revision, true, nil
}

// segmentAfter returns the segment that follows name ("" if name is the
// active one), and whether name is still a segment of the log.
func (l *Log) segmentAfter(name string) (string, bool, error) {
	l.manMu.Lock()
	files := l.man.eventFiles()
	l.manMu.Unlock()
	i := slices.Index(files, name)
	switch {
	case i < 0:
		return "", false, nil
	case i == len(files)-1:
		return "", true, nil
	default:
		return files[i+1], true, nil
	}
}

func (l *Log) openSegment(name string) (*segmentCursor, error) {
	path := join(l.dir, name)
	f, err := l.cfg.fs.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &segmentCursor{name: name, path: path, f: f}, nil
}

// segmentCursor reads the records of a segment that may still be growing:
// a record is returned only once all of it is in the file, and reading
// resumes where it stopped when more arrives.
type segmentCursor struct {
	name, path string
	f          io.ReadCloser
	buf        []byte // bytes read but not consumed, starting at file offset off
	off        int64
	started    bool // the header has been checked
	peeked     int  // length of the record peek returned, 0 if none
}

// fill reads until buf holds n bytes; false means the file has fewer so far.
// The buffer grows with the bytes read, not with n: n comes from a length
// prefix, which the file may never back.
func (s *segmentCursor) fill(n int) (bool, error) {
	for len(s.buf) < n {
		if cap(s.buf)-len(s.buf) < 64<<10 {
			grown := make([]byte, len(s.buf), max(2*cap(s.buf), len(s.buf)+64<<10))
			copy(grown, s.buf)
			s.buf = grown
		}
		k, err := s.f.Read(s.buf[len(s.buf):cap(s.buf)])
		s.buf = s.buf[:len(s.buf)+k]
		if errors.Is(err, io.EOF) || (err == nil && k == 0) {
			return len(s.buf) >= n, nil
		}
		if err != nil {
			return false, fmt.Errorf("read %s: %w", s.path, err)
		}
	}
	return true, nil
}

// peek returns the next whole record's payload without consuming it; ok is
// false when the file holds no whole record after the last one consumed.
func (s *segmentCursor) peek() (payload []byte, ok bool, err error) {
	if !s.started {
		if ok, err := s.fill(headerSize); !ok || err != nil {
			return nil, false, err
		}
		if string(s.buf[:len(magic)]) != magic {
			return nil, false, &CorruptError{File: s.path, Offset: 0, Reason: "not a Flux-KV log segment (bad magic)"}
		}
		s.buf, s.off, s.started = s.buf[headerSize:], int64(headerSize), true
	}
	if ok, err := s.fill(frameSize); !ok || err != nil {
		return nil, false, err
	}
	if crc32.Checksum(s.buf[:4], castagnoli) != binary.LittleEndian.Uint32(s.buf[4:]) {
		return nil, false, &CorruptError{File: s.path, Offset: s.off, Reason: "record length checksum mismatch"}
	}
	n := int(binary.LittleEndian.Uint32(s.buf[:4]))
	if n > MaxRecordBytes {
		return nil, false, &CorruptError{File: s.path, Offset: s.off, Reason: fmt.Sprintf("record length %d is over the %d-byte limit", n, MaxRecordBytes)}
	}
	if ok, err := s.fill(frameSize + n); !ok || err != nil {
		return nil, false, err
	}
	payload = s.buf[frameSize : frameSize+n]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(s.buf[8:]) {
		return nil, false, &CorruptError{File: s.path, Offset: s.off, Reason: "record checksum mismatch"}
	}
	s.peeked = frameSize + n
	return payload, true, nil
}

// consume moves past the record peek returned.
func (s *segmentCursor) consume() {
	s.buf = s.buf[s.peeked:]
	s.off += int64(s.peeked)
	s.peeked = 0
}

func (s *segmentCursor) close() { _ = s.f.Close() }

// keepHistory decides, during a rewrite that replaces the increments before
// rot, which of them readers still need, and drops history every reader
// has finished with. It returns the new history and the files to remove.
func (l *Log) keepHistory(cur *manifest, replaced []string, rot int64) ([]history, []string) {
	done := l.doneWith()
	hist := slices.Clone(cur.History)
	var remove []string
	if len(replaced) > 0 {
		if done < rot {
			hist = append(hist, history{Segments: replaced, First: cur.oldestAfterBase(), Last: rot})
		} else {
			remove = append(remove, replaced...)
		}
	}
	for len(hist) > 0 && hist[0].Last <= done {
		remove = append(remove, hist[0].Segments...)
		hist = hist[1:]
	}
	return hist, remove
}

// pruneHistory drops history every reader has finished with, between
// rewrites (a relay catching up after a broker outage frees the space).
func (l *Log) pruneHistory() error {
	l.rwMu.Lock()
	defer l.rwMu.Unlock()
	l.manMu.Lock()
	if len(l.man.History) == 0 {
		l.manMu.Unlock()
		return nil
	}
	next := *l.man
	next.History, _ = l.keepHistory(l.man, nil, 0)
	if len(next.History) == len(l.man.History) {
		l.manMu.Unlock()
		return nil
	}
	var remove []string
	for _, h := range l.man.History[:len(l.man.History)-len(next.History)] {
		remove = append(remove, h.Segments...)
	}
	if err := writeManifest(l.cfg.fs, l.dir, &next); err != nil {
		l.manMu.Unlock()
		return err
	}
	*l.man = next
	l.manMu.Unlock()
	removed := l.removeFiles(remove)
	l.mu.Lock()
	l.total -= removed
	l.lastBase = max(l.lastBase-removed, 0)
	l.m.size.Set(float64(l.total))
	l.mu.Unlock()
	l.cfg.logger.Info("dropped log history every reader has read", slog.Int("segments", len(remove)), slog.Int64("bytes", removed))
	return nil
}

// removeFiles deletes segments no manifest names any more and returns the
// bytes freed.
func (l *Log) removeFiles(names []string) int64 {
	var removed int64
	for _, name := range names {
		path := join(l.dir, name)
		if n, err := l.cfg.fs.Size(path); err == nil {
			removed += n
		}
		if err := l.cfg.fs.Remove(path); err != nil {
			l.cfg.logger.Warn("could not remove a replaced log segment; the next start removes it", slog.String("file", path), slog.Any("error", err))
		}
	}
	return removed
}
