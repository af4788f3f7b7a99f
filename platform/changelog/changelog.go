// Package changelog is a Flux-KV node's append-only file (AOF): every change
// the store reports is framed as a flux.cdc.v1.ChangeEvent and appended to
// the active segment before the client is answered, according to an fsync
// policy like Redis's appendfsync. At startup the log is replayed into an
// empty store; a background rewrite keeps it from growing without bound.
//
// On disk, a directory holds a MANIFEST (JSON) naming a base snapshot and
// the increment segments after it; the last increment is active. Records are
// length + CRC-32C framed. A torn last record, which a crash can leave, is cut
// off at startup with a warning; damage anywhere else refuses to start and
// names the file and byte offset.
//
// Writes are grouped: the store's change hook (Append) only encodes into a
// buffer; one writer goroutine hands everything buffered to the OS in one
// write and, under FsyncAlways, one fsync, then wakes every writer it
// covered (group commit). Wait blocks a caller until its revision is as
// durable as the policy promises.
package changelog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/store"
)

// Policy says when appended records are forced to stable storage.
type Policy int

// The fsync policies, named as Redis names them. The zero value is
// FsyncEverySec, the default.
const (
	// FsyncEverySec fsyncs in the background once a second: a crash of the
	// process loses nothing acknowledged, a power loss at most about a
	// second of writes.
	FsyncEverySec Policy = iota
	// FsyncAlways acknowledges a write only after its record is fsynced;
	// concurrent writers share each fsync.
	FsyncAlways
	// FsyncNo leaves flushing to the operating system.
	FsyncNo
)

// ParsePolicy parses "always", "everysec" or "no".
func ParsePolicy(s string) (Policy, error) {
	switch strings.ToLower(s) {
	case "always":
		return FsyncAlways, nil
	case "everysec":
		return FsyncEverySec, nil
	case "no":
		return FsyncNo, nil
	}
	return 0, fmt.Errorf("appendfsync %q: use always, everysec or no", s)
}

func (p Policy) String() string {
	switch p {
	case FsyncAlways:
		return "always"
	case FsyncEverySec:
		return "everysec"
	case FsyncNo:
		return "no"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

var (
	// ErrStalled is returned by Reserve and Wait when the disk has not
	// accepted records for longer than the stall timeout.
	ErrStalled = errors.New("append-only file is stalled: the disk is not keeping up")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("append-only file is closed")
)

// ReplayStats describes what Replay found.
type ReplayStats struct {
	Records      int64         // records applied
	Revision     int64         // highest revision in the log (or the base revision)
	DroppedBytes int64         // bytes of a torn tail that were cut off
	Duration     time.Duration // time spent replaying
}

// Log is an open append-only file. Open it, Replay it into a store, Start
// it, install Append as the store's change hook, and Close it last.
type Log struct {
	dir    string
	nodeID string
	cfg    config
	m      *metrics

	manMu sync.Mutex // guards man
	man   *manifest

	mu      sync.Mutex
	buf     []byte // encoded records not yet handed to the OS
	spare   []byte
	bufLast int64 // revision of the last record appended (buffered or not)
	// written and synced are written under mu but read without it, so that
	// Wait's common case takes no lock while many writers wait at once.
	written  atomic.Int64 // highest revision handed to the OS
	synced   atomic.Int64 // highest revision known to be on stable storage
	buffered atomic.Int64 // len(buf), for Reserve's lock-free check
	broken   atomic.Bool  // failed or closed, for Reserve's lock-free check
	// stalledNow mirrors stalled for Reserve's lock-free check.
	stalledNow atomic.Bool
	failed     error     // sticky: the first write or fsync error
	stalled    bool      // the disk has made no progress for the stall timeout
	progress   time.Time // when the disk last made progress, or work arrived at an idle log
	closed     bool
	advancec   chan struct{} // closed and replaced whenever written, synced or failed change
	file       File          // active segment
	total      int64         // bytes in all segments of the manifest
	lastBase   int64         // total after the last rewrite (or at start), for the growth trigger
	eb         eventBuf      // guarded by mu
	tail       *Tail         // recent events, for readers
	stamp      Stamp         // set before the store changes; nil stamps nothing

	kickc    chan struct{}
	rotatec  chan chan rotation
	rewritec chan chan error
	rwMu     sync.Mutex // serialises rewrites

	started   bool
	closeOnce sync.Once
	stopc     chan struct{}
	wg        sync.WaitGroup
}

type rotation struct {
	revision int64 // every record up to this is in the segments before the new one
	err      error
}

// Open opens (or creates) the log in dir for nodeID. A log written by
// another node id is refused, so two nodes never share a data directory by
// mistake. Files in dir that the manifest does not name (left by a crash
// during a rewrite) are removed.
func Open(dir, nodeID string, opts ...Option) (_ *Log, err error) {
	cfg := defaultConfig()
	for _, opt := range opts {
		opt(&cfg)
	}
	l := &Log{
		dir:      dir,
		nodeID:   nodeID,
		cfg:      cfg,
		advancec: make(chan struct{}),
		kickc:    make(chan struct{}, 1),
		rotatec:  make(chan chan rotation),
		rewritec: make(chan chan error),
		stopc:    make(chan struct{}),
		tail:     newTail(nodeID, cfg.tailEvents, cfg.tailBytes),
	}
	if l.m, err = newMetrics(cfg.registerer); err != nil {
		return nil, err
	}
	fsys := cfg.fs
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	man, err := readManifest(fsys, dir)
	if err != nil {
		return nil, err
	}
	if man == nil {
		man = &manifest{Format: formatVersion, NodeID: nodeID}
		seg := man.newName("incr")
		if err := createSegment(fsys, dir, seg, kindIncrement); err != nil {
			return nil, err
		}
		man.Segments = []string{seg}
		if err := writeManifest(fsys, dir, man); err != nil {
			return nil, err
		}
	}
	if man.NodeID != nodeID {
		return nil, fmt.Errorf("log in %s belongs to node %q, not %q: use that node id or another data directory", dir, man.NodeID, nodeID)
	}
	l.man = man
	if err := l.removeStrays(); err != nil {
		return nil, err
	}
	return l, nil
}

// Dir is the directory the log lives in.
func (l *Log) Dir() string { return l.dir }

// removeStrays deletes segment files the manifest does not name.
func (l *Log) removeStrays() error {
	names, err := l.cfg.fs.List(l.dir)
	if err != nil {
		return fmt.Errorf("list log dir: %w", err)
	}
	keep := map[string]bool{manifestName: true}
	for _, f := range l.man.allFiles() {
		keep[f] = true
	}
	removed := false
	for _, name := range names {
		stray := name == manifestTmpName || strings.HasSuffix(name, segmentSuffix) || strings.HasSuffix(name, segmentSuffix+".tmp")
		if keep[name] || !stray {
			continue
		}
		l.cfg.logger.Warn("removing a log file no manifest names (left by an interrupted rewrite)", slog.String("file", join(l.dir, name)))
		if err := l.cfg.fs.Remove(join(l.dir, name)); err != nil {
			return fmt.Errorf("remove stray log file: %w", err)
		}
		removed = true
	}
	if removed {
		return l.cfg.fs.SyncDir(l.dir)
	}
	return nil
}

func createSegment(fsys FS, dir, name string, kind uint32) error {
	f, err := fsys.Create(join(dir, name))
	if err != nil {
		return fmt.Errorf("create segment: %w", err)
	}
	if _, err := f.Write(appendHeader(nil, kind)); err != nil {
		f.Close()
		return fmt.Errorf("write segment header: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync segment: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return fsys.SyncDir(dir)
}

// Target is what Replay rebuilds: *store.Store.
type Target interface {
	// Apply replays one change.
	Apply(store.Change) error
	// AdvanceRevision raises the revision counter, so revisions continue
	// after the highest one the log has seen even if its key is gone.
	AdvanceRevision(rev int64)
}

// Replay applies every record of the log to t, oldest first, restores t's
// revision counter and then opens the active segment for appending. It must
// be called once, before Start. A torn tail of the active segment is cut
// back to the last whole record, with a warning; any other damage is
// returned as a *CorruptError.
func (l *Log) Replay(t Target) (ReplayStats, error) {
	start := time.Now()
	var stats ReplayStats
	stats.Revision = l.man.BaseRevision
	ap := startApplier(t)
	defer ap.close()
	files := l.man.files()
	for i, name := range files {
		path := join(l.dir, name)
		last := i == len(files)-1
		end, size, err := scanFile(l.cfg.fs, path, func(payload []byte) error {
			c, err := decodeChange(payload)
			if err != nil {
				return err
			}
			stats.Records++
			stats.Revision = max(stats.Revision, c.Revision)
			return ap.add(c)
		})
		switch {
		case errors.Is(err, errTorn) && last:
			stats.DroppedBytes = size - end
			l.cfg.logger.Warn("log ends with a torn record, as a crash can leave; cutting it off",
				slog.String("file", path), slog.Int64("offset", end), slog.Int64("dropped_bytes", stats.DroppedBytes))
			if err := l.cfg.fs.Truncate(path, end); err != nil {
				return stats, fmt.Errorf("cut torn tail of %s: %w", path, err)
			}
			size = end
		case errors.Is(err, errTorn):
			return stats, &CorruptError{File: path, Offset: end, Reason: "record cut short in a segment that is not the last"}
		case err != nil:
			return stats, err
		}
		l.total += size
	}
	if err := ap.close(); err != nil {
		return stats, err
	}
	// History is not replayed, but it is on disk: it counts in the size
	// that rewrites and pruning account for.
	for _, h := range l.man.History {
		for _, name := range h.Segments {
			size, err := l.cfg.fs.Size(join(l.dir, name))
			if err != nil {
				return stats, fmt.Errorf("stat %s: %w", join(l.dir, name), err)
			}
			l.total += size
		}
	}
	t.AdvanceRevision(stats.Revision)
	f, err := l.cfg.fs.OpenAppend(join(l.dir, l.man.active()))
	if err != nil {
		return stats, fmt.Errorf("open active segment: %w", err)
	}
	l.file = f
	l.written.Store(stats.Revision)
	l.synced.Store(stats.Revision)
	l.tail.mu.Lock()
	l.tail.last, l.tail.durable = stats.Revision, stats.Revision
	l.tail.mu.Unlock()
	l.lastBase = l.total
	stats.Duration = time.Since(start)
	l.m.replayed.Set(float64(stats.Records))
	l.m.dropped.Set(float64(stats.DroppedBytes))
	l.m.size.Set(float64(l.total))
	return stats, nil
}

// scanFile calls fn with each record's payload. It returns where the whole
// records end and the file's size; err is errTorn for a torn last record.
func scanFile(fsys FS, path string, fn func([]byte) error) (end, size int64, err error) {
	size, err = fsys.Size(path)
	if err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	r, err := fsys.Open(path)
	if err != nil {
		return 0, size, fmt.Errorf("open %s: %w", path, err)
	}
	defer r.Close()
	sr, err := newSegmentReader(r, path, size)
	if err != nil {
		if errors.Is(err, errTorn) {
			return 0, size, &CorruptError{File: path, Offset: 0, Reason: "shorter than a segment header"}
		}
		return 0, size, err
	}
	for {
		payload, err := sr.next()
		if err == io.EOF {
			return sr.off, size, nil
		}
		if err != nil {
			return sr.off, size, err
		}
		if err := fn(payload); err != nil {
			var ce *CorruptError
			if errors.As(err, &ce) {
				return sr.off, size, err
			}
			return sr.off, size, &CorruptError{File: path, Offset: sr.off - int64(frameSize+len(payload)), Reason: err.Error()}
		}
	}
}

// Start launches the writer, the once-a-second fsync (FsyncEverySec) and
// the rewrite trigger. Replay must have been called.
func (l *Log) Start() {
	l.mu.Lock()
	if l.started || l.file == nil {
		l.mu.Unlock()
		return
	}
	l.started = true
	l.mu.Unlock()
	l.wg.Add(3)
	go l.runWriter()
	go l.runRewriter()
	go l.runWatchdog()
	if l.cfg.policy == FsyncEverySec {
		l.wg.Add(1)
		go l.runSyncer()
	}
}

// Append encodes c into the write buffer. It is the store's change hook:
// it never blocks on I/O and never fails; a log that can no longer write
// fails Wait and Reserve instead.
func (l *Log) Append(c store.Change) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed != nil || l.closed {
		return
	}
	if l.bufLast <= l.durable() {
		l.progress = time.Now()
	}
	ev := l.eb.fill(l.nodeID, c, l.stamp)
	start := len(l.buf)
	buf, err := appendFrame(l.buf, func(b []byte) ([]byte, error) {
		return proto.MarshalOptions{}.MarshalAppend(b, ev)
	})
	if err != nil {
		l.failLocked(fmt.Errorf("encode revision %d: %w", c.Revision, err))
		return
	}
	// The tail gets its own copy: the buffer is reused once written.
	l.tail.push(Event{
		Revision: c.Revision, Op: ev.Op, Key: c.Key, Time: c.CommitTime, Internal: ev.Internal,
		Data: append([]byte(nil), buf[start+frameSize:]...),
	})
	l.buf, l.bufLast = buf, c.Revision
	l.buffered.Store(int64(len(buf)))
	select {
	case l.kickc <- struct{}{}:
	default:
	}
}

// Stamp returns, for a change to key about to be recorded, the ring epoch
// the node routes by and whether the record is internal (never published:
// ChangeEvent.internal). It is called with the store's commit lock held, so
// it must be fast and must not call the store.
type Stamp func(key string) (epoch int64, internal bool)

// SetStamp sets what the log stamps each record with; call it before the
// store changes.
func (l *Log) SetStamp(fn Stamp) { l.stamp = fn }

// eventBuf encodes changes as ChangeEvents, reusing one message and its
// timestamps, so encoding allocates nothing but the output.
type eventBuf struct {
	ev       cdcv1.ChangeEvent
	commitTS timestamppb.Timestamp
	expireTS timestamppb.Timestamp
}

// fill sets the event from c and returns it; it is valid until the next
// call.
func (b *eventBuf) fill(nodeID string, c store.Change, stamp Stamp) *cdcv1.ChangeEvent {
	b.ev = cdcv1.ChangeEvent{NodeId: nodeID, Revision: c.Revision, Op: opOf(c.Op), Key: c.Key, Value: c.Value}
	if stamp != nil {
		b.ev.Epoch, b.ev.Internal = stamp(c.Key)
	}
	if !c.CommitTime.IsZero() {
		b.commitTS = timestamppb.Timestamp{Seconds: c.CommitTime.Unix(), Nanos: int32(c.CommitTime.Nanosecond())}
		b.ev.CommitTime = &b.commitTS
	}
	if c.Op == store.OpPut && !c.ExpireTime.IsZero() {
		b.expireTS = timestamppb.Timestamp{Seconds: c.ExpireTime.Unix(), Nanos: int32(c.ExpireTime.Nanosecond())}
		b.ev.ExpireTime = &b.expireTS
	}
	return &b.ev
}

// Reserve waits while the write buffer is over its limit, which happens
// only when the disk stops accepting writes. It gives up with ErrStalled
// after the stall timeout, or with ctx's error. Writers call it before they
// change the store, so a stalled disk bounds memory instead of growing it.
func (l *Log) Reserve(ctx context.Context) error {
	if l.buffered.Load() < int64(l.cfg.bufferLimit) && !l.broken.Load() && !l.stalledNow.Load() {
		return nil
	}
	for {
		l.mu.Lock()
		over, c, err, stalled := len(l.buf) >= l.cfg.bufferLimit, l.advancec, l.errLocked(), l.stalled
		l.mu.Unlock()
		switch {
		case err != nil:
			return err
		case stalled:
			// A write now could not be confirmed in time either: refuse it
			// before it is applied, rather than answer "outcome unknown".
			return ErrStalled
		case !over:
			return nil
		}
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Wait blocks until the record of revision rev is as durable as the policy
// promises: on stable storage under FsyncAlways, handed to the OS
// otherwise. It gives up with ErrStalled if the disk makes no progress on
// it for the stall timeout, with ctx's error, or with the log's failure if
// it can no longer write.
func (l *Log) Wait(ctx context.Context, rev int64) error {
	done := &l.written
	if l.cfg.policy == FsyncAlways {
		done = &l.synced
	}
	for {
		if done.Load() >= rev {
			return nil
		}
		l.mu.Lock()
		c, err, stalled := l.advancec, l.errLocked(), l.stalled
		l.mu.Unlock()
		// Checked again now that c is known: an advance between the first
		// check and taking c would otherwise go unnoticed.
		if done.Load() >= rev {
			return nil
		}
		if err != nil {
			return err
		}
		if stalled {
			return ErrStalled
		}
		select {
		case <-c:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Done reports whether the record of revision rev is already as durable as
// the policy promises, so that Wait would return nil at once.
func (l *Log) Done(rev int64) bool {
	if l.cfg.policy == FsyncAlways {
		return l.synced.Load() >= rev
	}
	return l.written.Load() >= rev
}

// Synced is the highest revision known to be on stable storage.
func (l *Log) Synced() int64 {
	return l.synced.Load()
}

// Size is the number of bytes in the log's segments.
func (l *Log) Size() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

func (l *Log) errLocked() error {
	if l.failed != nil {
		return l.failed
	}
	if l.closed {
		return ErrClosed
	}
	return nil
}

func (l *Log) failLocked(err error) {
	if l.failed == nil {
		l.broken.Store(true)
		l.failed = fmt.Errorf("append-only file failed: %w", err)
		l.cfg.logger.Error("append-only file failed; writes are refused until restart", slog.Any("error", err))
		l.broadcastLocked()
	}
}

func (l *Log) broadcastLocked() {
	close(l.advancec)
	l.advancec = make(chan struct{})
	l.tail.advance(l.durable())
}

// runWriter hands buffered records to the OS, fsyncing under FsyncAlways,
// and performs rotations so they are ordered with writes.
func (l *Log) runWriter() {
	defer l.wg.Done()
	for {
		select {
		case <-l.kickc:
			l.flush()
		case reply := <-l.rotatec:
			reply <- l.rotate()
		case <-l.stopc:
			l.flush()
			return
		}
	}
}

// flush writes what is buffered and, under FsyncAlways, fsyncs it.
func (l *Log) flush() {
	l.mu.Lock()
	data, last, f := l.buf, l.bufLast, l.file
	if len(data) == 0 || l.failed != nil {
		l.mu.Unlock()
		return
	}
	l.buf, l.spare = l.spare[:0], nil
	l.mu.Unlock()

	_, err := f.Write(data)
	if err == nil && l.cfg.policy == FsyncAlways {
		err = l.sync(f)
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	l.spare = data[:0]
	l.buffered.Store(int64(len(l.buf)))
	l.m.buffered.Set(float64(len(l.buf)))
	if err != nil {
		l.failLocked(err)
		return
	}
	l.total += int64(len(data))
	l.m.size.Set(float64(l.total))
	l.written.Store(last)
	if l.cfg.policy == FsyncAlways {
		l.synced.Store(last)
	}
	l.progress, l.stalled = time.Now(), false
	l.stalledNow.Store(false)
	l.broadcastLocked()
}

// sync fsyncs f, timing it and reporting slow disks.
func (l *Log) sync(f File) error {
	start := time.Now()
	err := f.Sync()
	d := time.Since(start)
	l.m.fsync.Observe(d.Seconds())
	if d > l.cfg.slowSync {
		l.m.slowSyncs.Inc()
		l.cfg.logger.Warn("slow fsync of the append-only file", slog.Duration("took", d))
	}
	return err
}

// durable is the revision writers wait for under the policy.
func (l *Log) durable() int64 {
	if l.cfg.policy == FsyncAlways {
		return l.synced.Load()
	}
	return l.written.Load()
}

// runWatchdog declares the log stalled when records have waited for the
// disk longer than the stall timeout, which makes Wait and Reserve fail with
// ErrStalled instead of holding writers indefinitely; progress clears it.
// One watchdog costs less than a timer in every Wait.
func (l *Log) runWatchdog() {
	defer l.wg.Done()
	tick := time.NewTicker(max(l.cfg.stallTimeout/5, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-l.stopc:
			return
		}
		l.mu.Lock()
		stalled := l.bufLast > l.durable() && time.Since(l.progress) > l.cfg.stallTimeout
		if stalled && !l.stalled {
			l.stalled = true
			l.stalledNow.Store(true)
			l.m.stalls.Inc()
			l.cfg.logger.Warn("append-only file is stalled: writes are refused until the disk makes progress",
				slog.Duration("no_progress_for", time.Since(l.progress)))
			l.broadcastLocked()
		}
		l.mu.Unlock()
	}
}

// runSyncer fsyncs the active segment once per interval, in the background,
// so a slow disk delays durability but not writers.
func (l *Log) runSyncer() {
	defer l.wg.Done()
	tick := time.NewTicker(l.cfg.syncInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-l.stopc:
			return
		}
		l.mu.Lock()
		f, rev := l.file, l.written.Load()
		needed := rev > l.synced.Load() && l.failed == nil
		l.mu.Unlock()
		if !needed {
			continue
		}
		err := l.sync(f)
		l.mu.Lock()
		switch {
		case f != l.file:
			// A rotation replaced the file and fsynced it first.
		case err != nil:
			l.failLocked(err)
		case rev > l.synced.Load():
			l.synced.Store(rev)
			l.broadcastLocked()
		}
		l.mu.Unlock()
	}
}

// Close stops the background work, writes and fsyncs everything buffered
// whatever the policy, and closes the active segment. It returns the log's
// failure, if it had one. It is idempotent.
func (l *Log) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.stopc)
		l.wg.Wait()
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.file != nil {
			if len(l.buf) > 0 && l.failed == nil {
				// Not started: nothing drained the buffer.
				if _, werr := l.file.Write(l.buf); werr != nil {
					l.failLocked(werr)
				} else {
					l.written.Store(l.bufLast)
				}
				l.buf = nil
				l.buffered.Store(0)
			}
			if l.failed == nil {
				if serr := l.file.Sync(); serr != nil {
					l.failLocked(serr)
				} else {
					l.synced.Store(l.written.Load())
				}
			}
			if cerr := l.file.Close(); cerr != nil && l.failed == nil {
				l.failLocked(cerr)
			}
		}
		l.closed = true
		l.broken.Store(true)
		l.broadcastLocked()
		l.tail.Close()
		err = l.failed
	})
	return err
}

func opOf(op store.Op) cdcv1.Op {
	switch op {
	case store.OpPut:
		return cdcv1.Op_OP_PUT
	case store.OpDelete:
		return cdcv1.Op_OP_DELETE
	case store.OpExpire:
		return cdcv1.Op_OP_EXPIRE
	}
	return cdcv1.Op_OP_UNSPECIFIED
}
