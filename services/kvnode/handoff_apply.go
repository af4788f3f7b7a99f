package kvnode

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/platform/store"
)

// catchUpRevisions is how close behind its source's last revision a copy
// counts as caught up: the target freezes the source then, and the writes
// to moving keys pause while it applies about this many revisions' worth
// of changes (fewer: only those to moving keys).
const catchUpRevisions = 256

// copyStream is a HandoffService.Copy stream as the target reads it; the
// connect client's *connect.ServerStreamForClient is one.
type copyStream interface {
	Receive() bool
	Msg() *clusterv1.CopyResponse
	Err() error
}

// applier is the target side of a copy: it applies one Copy stream from
// one source to the target's store. Items may come more than once (the
// snapshot and the changes overlap) and, per key, out of order (a snapshot
// entry may be newer than a change that follows it), so the applier keeps
// per key the source revision it last applied, puts and removals alike:
// anything not newer than that is skipped. Applied items go through the
// store's normal writes, so the target's change log records them.
//
// The map holds one revision for every moving key the stream has touched;
// it lives as long as the applier, which is one copy.
type applier struct {
	store   *store.Store
	now     func() time.Time // the target store's clock
	applied map[string]int64
	done    bool         // SnapshotDone has been applied
	last    int64        // revision of the last change applied
	reached atomic.Int64 // see revision
	// caughtUp is set once the source reported progress with no change
	// queued behind it: the target was as far as the source then.
	caughtUp atomic.Bool
	copied   atomic.Int64 // entries and changes applied
	head     atomic.Int64 // the source's revision as of its last message
	onApply  func()       // called for every item applied; may be nil
}

// lag is how many of the source's revisions, as of its last message, the
// applier has not reached.
func (a *applier) lag() int64 { return max(a.head.Load()-a.reached.Load(), 0) }

// newApplier returns an applier writing to st, whose clock is now.
func newApplier(st *store.Store, now func() time.Time) *applier {
	return &applier{store: st, now: now, applied: map[string]int64{}}
}

// revision is the source revision the copy has been applied through: the
// target holds every moving key as the source held it at that revision
// (later changes to other keys may be applied too). It is 0 until the
// snapshot is complete. It is safe to call while run runs.
func (a *applier) revision() int64 { return a.reached.Load() }

// run applies the stream until it ends, and returns the revision reached
// with the stream's error: nil only if the source ended the stream, which
// a source does not do; the caller's cancellation comes back as the
// stream's CANCELED. A stream that breaks its protocol, or a write the
// store refuses, ends run with an error too.
func (a *applier) run(stream copyStream) (int64, error) {
	for stream.Receive() {
		if err := a.apply(stream.Msg()); err != nil {
			return a.revision(), err
		}
	}
	return a.revision(), stream.Err()
}

func (a *applier) apply(msg *clusterv1.CopyResponse) error {
	switch item := msg.GetItem().(type) {
	case *clusterv1.CopyResponse_Entries:
		if a.done {
			return errors.New("copy stream: snapshot entries after snapshot_done")
		}
		for _, e := range item.Entries.GetEntries() {
			var expire time.Time
			if e.GetExpireTime() != nil {
				expire = e.GetExpireTime().AsTime()
			}
			if err := a.put(e.GetKey(), e.GetValue(), e.GetRevision(), expire); err != nil {
				return err
			}
		}
	case *clusterv1.CopyResponse_SnapshotDone:
		if a.done {
			return errors.New("copy stream: second snapshot_done")
		}
		a.done = true
		a.last = item.SnapshotDone.GetRevision()
		a.reached.Store(a.last)
	case *clusterv1.CopyResponse_Changes:
		if !a.done {
			return errors.New("copy stream: changes before snapshot_done")
		}
		for _, ev := range item.Changes.GetEvents() {
			if ev.GetRevision() <= a.last {
				return fmt.Errorf("copy stream: change %d after %d: out of order", ev.GetRevision(), a.last)
			}
			if err := a.change(ev); err != nil {
				return err
			}
			a.last = ev.GetRevision()
		}
		a.reached.Store(max(a.last, item.Changes.GetRevision(), a.reached.Load()))
		a.head.Store(max(a.head.Load(), item.Changes.GetSourceRevision()))
		// Caught up: the source's reader was close behind its last
		// revision when it sent this (an idle source reports its position,
		// which then is its last revision).
		if item.Changes.GetSourceRevision()-item.Changes.GetRevision() <= catchUpRevisions {
			a.caughtUp.Store(true)
		}
	default:
		return errors.New("copy stream: empty response")
	}
	return nil
}

func (a *applier) change(ev *cdcv1.ChangeEvent) error {
	switch ev.GetOp() {
	case cdcv1.Op_OP_PUT:
		var expire time.Time
		if ev.GetExpireTime() != nil {
			expire = ev.GetExpireTime().AsTime()
		}
		return a.put(ev.GetKey(), ev.GetValue(), ev.GetRevision(), expire)
	case cdcv1.Op_OP_DELETE, cdcv1.Op_OP_EXPIRE:
		return a.remove(ev.GetKey(), ev.GetRevision())
	default:
		return fmt.Errorf("copy stream: change %d has op %v", ev.GetRevision(), ev.GetOp())
	}
}

// put sets key as the source put it at rev, keeping its absolute expiry,
// unless something as new was applied already. A key whose expiry has
// passed is removed instead: the source holds it no longer either.
func (a *applier) put(key string, value []byte, rev int64, expire time.Time) error {
	if rev <= a.applied[key] {
		return nil
	}
	a.applied[key] = rev
	a.counted()
	if !expire.IsZero() && !expire.After(a.now()) {
		return a.delete(key)
	}
	if _, err := a.store.Put(key, value, store.PutOptions{ExpireAt: expire}); err != nil {
		return fmt.Errorf("apply put of %q: %w", key, err)
	}
	return nil
}

// remove deletes key if the removal at rev is newer than what was applied.
func (a *applier) remove(key string, rev int64) error {
	if rev <= a.applied[key] {
		return nil
	}
	a.applied[key] = rev
	a.counted()
	return a.delete(key)
}

func (a *applier) counted() {
	a.copied.Add(1)
	if a.onApply != nil {
		a.onApply()
	}
}

func (a *applier) delete(key string) error {
	if _, err := a.store.Delete(key, store.Condition{}); err != nil {
		return fmt.Errorf("apply delete of %q: %w", key, err)
	}
	return nil
}
