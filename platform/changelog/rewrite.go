package changelog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/store"
)

// Rewrite compacts the log now: it writes a base snapshot of the live keys
// and drops the segments it replaces, while writes go on to a fresh
// segment. Replaced segments whose events a reader still needs are kept as
// history until it has read them. It returns when the rewrite is done, or
// ctx's error (the rewrite still finishes in the background).
func (l *Log) Rewrite(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case l.rewritec <- reply:
	case <-l.stopc:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runRewriter rewrites on request and when the log has grown past the
// threshold.
func (l *Log) runRewriter() {
	defer l.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	// After a failed automatic rewrite, wait before the next one: each
	// attempt rotates to a new segment, and retrying every second would
	// pile them up.
	var notBefore time.Time
	backoff := time.Minute
	for {
		select {
		case reply := <-l.rewritec:
			reply <- l.rewrite()
		case <-tick.C:
			if err := l.pruneHistory(); err != nil {
				l.cfg.logger.Warn("could not drop log history", slog.Any("error", err))
			}
			if time.Now().Before(notBefore) || !l.due() {
				continue
			}
			switch err := l.rewrite(); {
			case err == nil:
				backoff = time.Minute
			default:
				l.cfg.logger.Error("automatic rewrite of the append-only file failed; retrying later",
					slog.Any("error", err), slog.Duration("retry_in", backoff))
				notBefore = time.Now().Add(backoff)
				backoff = min(2*backoff, 30*time.Minute)
			}
		case <-l.stopc:
			return
		}
	}
}

func (l *Log) due() bool {
	if l.cfg.snapshot == nil || l.cfg.rewriteGrowth <= 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total >= l.cfg.rewriteMinBytes && l.total >= l.lastBase+l.lastBase*int64(l.cfg.rewriteGrowth)/100
}

// rewrite runs the steps of a rewrite. Each step leaves the directory in a
// state a restart recovers from: the manifest always names a complete set
// of segments, and files it does not name are removed at the next Open.
func (l *Log) rewrite() (err error) {
	if l.cfg.snapshot == nil {
		return errors.New("rewrite: the log has no snapshot source")
	}
	l.rwMu.Lock()
	defer l.rwMu.Unlock()
	start := time.Now()
	defer func() {
		switch {
		case err == nil:
			l.m.rewrites.WithLabelValues("ok").Inc()
			l.m.rewriteD.Observe(time.Since(start).Seconds())
		default:
			l.m.rewrites.WithLabelValues("error").Inc()
		}
	}()

	// 1. New writes go to a fresh segment; everything up to rev is before it.
	reply := make(chan rotation, 1)
	select {
	case l.rotatec <- reply:
	case <-l.stopc:
		return ErrClosed
	}
	rot := <-reply
	if rot.err != nil {
		return rot.err
	}
	if err := l.cfg.failpoint("rewrite:rotated"); err != nil {
		return err
	}

	// 2. Snapshot the live keys into a new base. The snapshot is not a point
	// in time: it may hold changes newer than rev, but those are also in the
	// new segment, which replay applies after the base, so the result is the
	// same.
	l.manMu.Lock()
	next := *l.man
	next.Segments = slices.Clone(l.man.Segments)
	base := next.newName("base")
	l.manMu.Unlock()
	size, err := l.writeBase(base)
	if err != nil {
		return err
	}
	if err := l.cfg.failpoint("rewrite:base-written"); err != nil {
		return err
	}

	// 3. Switch the manifest: the new base plus the segment that began at
	// rotation, and as history the replaced increments readers still need.
	l.manMu.Lock()
	active := l.man.active()
	replaced := slices.DeleteFunc(slices.Clone(l.man.Segments), func(name string) bool { return name == active })
	hist, drop := l.keepHistory(l.man, replaced, rot.revision)
	next.Base, next.BaseRevision, next.Segments, next.Next = base, rot.revision, []string{active}, max(next.Next, l.man.Next)
	next.History = hist
	if l.man.Base != "" {
		drop = append(drop, l.man.Base)
	}
	if err := writeManifest(l.cfg.fs, l.dir, &next); err != nil {
		l.manMu.Unlock()
		return err
	}
	*l.man = next
	l.manMu.Unlock()
	if err := l.cfg.failpoint("rewrite:manifest-switched"); err != nil {
		return err
	}

	// 4. Only now may the dropped files go.
	var removed int64
	for _, name := range drop {
		removed += l.removeFiles([]string{name})
		if err := l.cfg.failpoint("rewrite:removed-one"); err != nil {
			return err
		}
	}
	if err := l.cfg.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("sync log dir: %w", err)
	}

	l.mu.Lock()
	l.total += size - removed
	l.lastBase = l.total
	l.m.size.Set(float64(l.total))
	l.mu.Unlock()
	l.cfg.logger.Info("rewrote the append-only file",
		slog.String("base", base), slog.Int64("base_bytes", size), slog.Int64("removed_bytes", removed),
		slog.Duration("took", time.Since(start)))
	return nil
}

// rotate runs in the writer goroutine: it flushes and fsyncs the active
// segment, starts a new one and records it in the manifest.
func (l *Log) rotate() rotation {
	l.flush()
	l.mu.Lock()
	f, rev, failed := l.file, l.written.Load(), l.failed
	l.mu.Unlock()
	if failed != nil {
		return rotation{err: failed}
	}
	if err := l.sync(f); err != nil {
		l.mu.Lock()
		l.failLocked(err)
		l.mu.Unlock()
		return rotation{err: err}
	}

	l.manMu.Lock()
	defer l.manMu.Unlock()
	next := *l.man
	next.Segments = slices.Clone(l.man.Segments)
	seg := next.newName("incr")
	if err := createSegment(l.cfg.fs, l.dir, seg, kindIncrement); err != nil {
		return rotation{err: err}
	}
	next.Segments = append(next.Segments, seg)
	if err := writeManifest(l.cfg.fs, l.dir, &next); err != nil {
		// The manifest on disk may already name the new segment while
		// writes would go on to the old one: stop writing rather than
		// leave a log that cannot be replayed.
		return l.failRotation(err)
	}
	nf, err := l.cfg.fs.OpenAppend(join(l.dir, seg))
	if err != nil {
		return l.failRotation(fmt.Errorf("open new segment: %w", err))
	}
	*l.man = next

	l.mu.Lock()
	l.file = nf
	l.synced.Store(max(l.synced.Load(), rev))
	l.total += int64(headerSize)
	l.broadcastLocked()
	l.mu.Unlock()
	if err := f.Close(); err != nil {
		l.cfg.logger.Warn("closing the previous log segment", slog.Any("error", err))
	}
	return rotation{revision: rev}
}

func (l *Log) failRotation(err error) rotation {
	l.mu.Lock()
	l.failLocked(fmt.Errorf("rotate: %w", err))
	l.mu.Unlock()
	return rotation{err: err}
}

// writeBase writes the snapshot into a temporary file, syncs it and renames
// it into place. It returns the file's size.
func (l *Log) writeBase(name string) (int64, error) {
	tmp := join(l.dir, name+".tmp")
	f, err := l.cfg.fs.Create(tmp)
	if err != nil {
		return 0, fmt.Errorf("create base: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var (
		size     int64
		frame    []byte
		ev       cdcv1.ChangeEvent
		expireTS timestamppb.Timestamp
	)
	// The header goes out first: a store with no live keys still gets a
	// valid, empty base.
	n, writeErr := w.Write(appendHeader(nil, kindBase))
	size += int64(n)
	l.cfg.snapshot(func(e store.Entry) bool {
		if writeErr != nil {
			return false
		}
		ev = cdcv1.ChangeEvent{NodeId: l.nodeID, Revision: e.ModRevision, Op: cdcv1.Op_OP_PUT, Key: e.Key, Value: e.Value}
		if !e.ExpireTime.IsZero() {
			expireTS = timestamppb.Timestamp{Seconds: e.ExpireTime.Unix(), Nanos: int32(e.ExpireTime.Nanosecond())}
			ev.ExpireTime = &expireTS
		}
		frame, writeErr = appendFrame(frame, func(b []byte) ([]byte, error) {
			return proto.MarshalOptions{}.MarshalAppend(b, &ev)
		})
		if writeErr == nil {
			var n int
			n, writeErr = w.Write(frame)
			size += int64(n)
		}
		frame = frame[:0]
		return writeErr == nil
	})
	if writeErr == nil {
		writeErr = w.Flush()
	}
	if writeErr == nil {
		writeErr = f.Sync()
	}
	if cerr := f.Close(); writeErr == nil {
		writeErr = cerr
	}
	if writeErr != nil {
		_ = l.cfg.fs.Remove(tmp)
		return 0, fmt.Errorf("write base: %w", writeErr)
	}
	if err := l.cfg.fs.Rename(tmp, join(l.dir, name)); err != nil {
		return 0, fmt.Errorf("install base: %w", err)
	}
	return size, l.cfg.fs.SyncDir(l.dir)
}
