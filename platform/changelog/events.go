package changelog

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/store"
)

// Event is one change as the log holds it, for the log's readers: Watch
// streams and the CDC relay.
type Event struct {
	Revision int64
	Op       cdcv1.Op
	Key      string
	Time     time.Time // commit time
	// Internal is set for a record never published (ChangeEvent.internal):
	// Watch and the CDC relay skip it; a copy of keys to another node does
	// not.
	Internal bool
	// Data is the record: the flux.cdc.v1.ChangeEvent in protobuf binary.
	// It is shared between readers, which must not modify it.
	Data []byte
}

// CompactedError reports that events a reader asked for are no longer
// held: a rewrite replaced them with a snapshot, or they fell out of a
// memory-only tail.
type CompactedError struct {
	Oldest int64 // the oldest revision a reader can start from
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("changes before revision %d are no longer held", e.Oldest)
}

// Events is a node's history of changes as readers see it: *Log, or *Tail
// for a node without an append-only file.
type Events interface {
	// NewReader returns a reader of the events with revisions above after,
	// or a *CompactedError if some of them are no longer held.
	NewReader(after int64) (*Reader, error)
	// Oldest is the oldest revision a reader can start from.
	Oldest() int64
	// Durable is the highest revision readers can see: the changes that
	// are as durable as the log's policy promises writers.
	Durable() int64
}

// Defaults of the in-memory tail of recent events.
const (
	DefaultTailEvents = 16384
	DefaultTailBytes  = 32 << 20
)

// Tail keeps the most recent events in memory, bounded in count and bytes,
// so that readers keeping up never touch the disk. A Log feeds its own
// tail; on its own, a Tail is the whole history of a node that keeps no
// append-only file.
type Tail struct {
	nodeID    string
	maxEvents int
	maxBytes  int
	// standalone tails encode events themselves and make them readable at
	// once; a Log's tail gets encoded events and durability from the log.
	standalone bool

	mu       sync.Mutex
	ring     []Event // ring buffer of n events starting at start
	start, n int
	bytes    int
	last     int64 // revision of the newest event appended
	durable  int64
	closed   bool
	advancec chan struct{} // closed and replaced when durable advances or the tail closes
	readers  map[*Reader]struct{}

	eb    eventBuf // guarded by mu
	stamp Stamp    // standalone tails only; set before the first Append
}

// SetStamp sets what a standalone tail stamps each event with; call it
// before the store it records changes.
func (t *Tail) SetStamp(fn Stamp) { t.stamp = fn }

// NewTail returns a standalone tail for a node that keeps no append-only
// file, holding up to maxEvents events and maxBytes bytes (0 means the
// default). Install its Append as the store's change hook; revision is the
// store's revision when it starts, so readers start after it.
func NewTail(nodeID string, revision int64, maxEvents, maxBytes int) *Tail {
	t := newTail(nodeID, maxEvents, maxBytes)
	t.standalone = true
	t.last, t.durable = revision, revision
	return t
}

func newTail(nodeID string, maxEvents, maxBytes int) *Tail {
	if maxEvents <= 0 {
		maxEvents = DefaultTailEvents
	}
	if maxBytes <= 0 {
		maxBytes = DefaultTailBytes
	}
	return &Tail{
		nodeID: nodeID, maxEvents: maxEvents, maxBytes: maxBytes,
		ring: make([]Event, maxEvents), advancec: make(chan struct{}), readers: map[*Reader]struct{}{},
	}
}

// Append records c. It is the store's change hook for a standalone tail.
func (t *Tail) Append(c store.Change) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ev := t.eb.fill(t.nodeID, c, t.stamp)
	data, err := proto.MarshalOptions{}.Marshal(ev)
	if err != nil {
		// A ChangeEvent always marshals; drop the tail rather than leave a
		// gap readers could not detect.
		t.resetLocked(c.Revision)
		return
	}
	t.pushLocked(Event{Revision: c.Revision, Op: ev.Op, Key: c.Key, Time: c.CommitTime, Internal: ev.Internal, Data: data})
	t.advanceLocked(c.Revision)
}

// push records an event the log has encoded; it becomes readable when the
// log reports it durable.
func (t *Tail) push(e Event) {
	t.mu.Lock()
	t.pushLocked(e)
	t.mu.Unlock()
}

func (t *Tail) pushLocked(e Event) {
	if t.n > 0 && e.Revision != t.last+1 {
		// Revisions are gap-free; anything else would let a reader skip
		// events without noticing. Start over from this one.
		t.resetLocked(e.Revision - 1)
	}
	for t.n > 0 && (t.n == t.maxEvents || t.bytes+len(e.Data) > t.maxBytes) {
		t.bytes -= len(t.ring[t.start].Data)
		t.ring[t.start] = Event{}
		t.start = (t.start + 1) % t.maxEvents
		t.n--
	}
	t.ring[(t.start+t.n)%t.maxEvents] = e
	t.n++
	t.bytes += len(e.Data)
	t.last = e.Revision
}

func (t *Tail) resetLocked(last int64) {
	clear(t.ring)
	t.start, t.n, t.bytes, t.last = 0, 0, 0, last
}

// advance makes events up to rev readable.
func (t *Tail) advance(rev int64) {
	t.mu.Lock()
	t.advanceLocked(rev)
	t.mu.Unlock()
}

func (t *Tail) advanceLocked(rev int64) {
	if rev <= t.durable && !t.closed {
		return
	}
	t.durable = max(t.durable, rev)
	close(t.advancec)
	t.advancec = make(chan struct{})
}

// Close wakes every reader with ErrClosed.
func (t *Tail) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		close(t.advancec)
		t.advancec = make(chan struct{})
	}
}

// first is the revision of the oldest event held; last+1 when empty.
func (t *Tail) firstLocked() int64 { return t.last - int64(t.n) + 1 }

// Oldest is the oldest revision a reader of a standalone tail can start
// from.
func (t *Tail) Oldest() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.firstLocked()
}

// Durable is the newest readable revision.
func (t *Tail) Durable() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.durable
}

// NewReader returns a reader of the events after revision after.
func (t *Tail) NewReader(after int64) (*Reader, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if first := t.firstLocked(); after+1 < first {
		return nil, &CompactedError{Oldest: first}
	}
	r := &Reader{tail: t, pos: after}
	t.readers[r] = struct{}{}
	return r, nil
}

// copyLocked returns up to max readable events after pos, and whether pos
// is inside what the tail holds (false: the reader must go to the files).
func (t *Tail) copyLocked(pos int64, maxN int) ([]Event, bool) {
	first := t.firstLocked()
	if pos+1 < first {
		return nil, false
	}
	end := min(t.durable, t.last, pos+int64(maxN))
	if end <= pos {
		return nil, true
	}
	out := make([]Event, 0, end-pos)
	for rev := pos + 1; rev <= end; rev++ {
		out = append(out, t.ring[(t.start+int(rev-first))%t.maxEvents])
	}
	return out, true
}

// floorLocked is the lowest position of an open reader, or -1 with none.
func (t *Tail) floorLocked() int64 {
	floor := int64(-1)
	for r := range t.readers {
		if p := r.position(); floor < 0 || p < floor {
			floor = p
		}
	}
	return floor
}

// Reader reads events in revision order, from the tail while it holds
// them and from the log's segments otherwise. Close it when done: an open
// reader keeps the log from dropping segments it has not read yet.
type Reader struct {
	tail *Tail
	log  *Log // nil for a standalone tail

	mu  sync.Mutex // guards pos against floor computations
	pos int64      // revision of the last event returned
	seg *segmentCursor
}

func (r *Reader) position() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pos
}

// Next waits until an event after the reader's position is readable, or
// ctx ends, and returns up to max of them, oldest first, without gaps. It
// returns ErrClosed once the log or tail is closed, and a *CompactedError
// if a memory-only reader fell behind what its tail holds.
func (r *Reader) Next(ctx context.Context, max int) ([]Event, error) {
	if max <= 0 {
		max = 1
	}
	for {
		t := r.tail
		t.mu.Lock()
		events, inTail := t.copyLocked(r.pos, max)
		closed, advancec, durable := t.closed, t.advancec, t.durable
		first := t.firstLocked()
		t.mu.Unlock()
		switch {
		case len(events) > 0:
			r.closeSegment()
			r.advanceTo(events[len(events)-1].Revision)
			return events, nil
		case closed:
			return nil, ErrClosed
		case !inTail && r.log == nil:
			return nil, &CompactedError{Oldest: first}
		case !inTail && r.pos < durable:
			events, err := r.readSegments(max, durable)
			if len(events) > 0 {
				// Events read before an error are returned; the error, if it
				// persists, comes with the next call.
				r.advanceTo(events[len(events)-1].Revision)
				return events, nil
			}
			if err != nil {
				return nil, err
			}
		}
		select {
		case <-advancec:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (r *Reader) advanceTo(rev int64) {
	r.mu.Lock()
	r.pos = rev
	r.mu.Unlock()
}

// Close releases the reader. It is idempotent.
func (r *Reader) Close() {
	r.tail.mu.Lock()
	delete(r.tail.readers, r)
	r.tail.mu.Unlock()
	r.closeSegment()
}

func (r *Reader) closeSegment() {
	if r.seg != nil {
		r.seg.close()
		r.seg = nil
	}
}

// readSegments reads up to max events after the reader's position, and not
// after durable, from the log's segment files.
func (r *Reader) readSegments(maxN int, durable int64) ([]Event, error) {
	if r.seg == nil {
		seg, err := r.log.openAt(r.pos + 1)
		if err != nil {
			return nil, err
		}
		r.seg = seg
	}
	var out []Event
	for len(out) < maxN {
		payload, ok, err := r.seg.peek()
		if err != nil {
			return out, err
		}
		if !ok {
			// The end of what this segment holds so far: go on to the next
			// one if a rotation has sealed this one.
			next, found, err := r.log.segmentAfter(r.seg.name)
			if err != nil {
				return out, err
			}
			if !found {
				// A rewrite dropped the segment once this reader was past
				// it: find the next event wherever it is now.
				r.closeSegment()
				pos := r.pos
				if len(out) > 0 {
					pos = out[len(out)-1].Revision
				}
				if r.seg, err = r.log.openAt(pos + 1); err != nil {
					return out, err
				}
				continue
			}
			if next == "" {
				return out, nil
			}
			// The rotation that made next wrote this segment's last records
			// before it listed next: read what arrived since the end was
			// seen before moving on.
			if _, more, err := r.seg.peek(); err != nil || more {
				if err != nil {
					return out, err
				}
				continue
			}
			r.seg.close()
			if r.seg, err = r.log.openSegment(next); err != nil {
				return out, err
			}
			continue
		}
		c, internal, err := decodeRecord(payload)
		if err != nil {
			return out, &CorruptError{File: r.seg.path, Offset: r.seg.off, Reason: err.Error()}
		}
		if c.Revision > durable {
			return out, nil
		}
		r.seg.consume()
		pos := r.pos
		if len(out) > 0 {
			pos = out[len(out)-1].Revision
		}
		switch {
		case c.Revision <= pos:
			continue // before the reader's start in this segment
		case c.Revision != pos+1:
			return out, fmt.Errorf("%s: revision %d follows %d: the log has a gap", r.seg.path, c.Revision, pos)
		}
		out = append(out, Event{Revision: c.Revision, Op: opOf(c.Op), Key: c.Key, Time: c.CommitTime, Internal: internal, Data: append([]byte(nil), payload...)})
	}
	return out, nil
}
