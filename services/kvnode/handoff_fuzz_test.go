package kvnode

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/platform/store"
)

// copyModel is what a target must hold after a Copy stream: per key, the
// newest item the source sent for it.
type copyModel struct {
	keys map[string]copyItem
	done bool
	last int64
}

type copyItem struct {
	rev    int64
	put    bool
	value  []byte
	expire time.Time
}

func (m *copyModel) set(key string, it copyItem) {
	if it.rev > m.keys[key].rev {
		m.keys[key] = it
	}
}

// apply takes msg as the applier must, and reports whether the applier
// must refuse it (having applied the items before the one it refuses).
func (m *copyModel) apply(msg *clusterv1.CopyResponse) (refuse bool) {
	switch item := msg.GetItem().(type) {
	case *clusterv1.CopyResponse_Entries:
		if m.done {
			return true
		}
		for _, e := range item.Entries.GetEntries() {
			it := copyItem{rev: e.GetRevision(), put: true, value: e.GetValue()}
			if e.GetExpireTime() != nil {
				it.expire = e.GetExpireTime().AsTime()
			}
			m.set(e.GetKey(), it)
		}
	case *clusterv1.CopyResponse_SnapshotDone:
		if m.done {
			return true
		}
		m.done, m.last = true, item.SnapshotDone.GetRevision()
	case *clusterv1.CopyResponse_Changes:
		if !m.done {
			return true
		}
		for _, ev := range item.Changes.GetEvents() {
			if ev.GetRevision() <= m.last {
				return true
			}
			it := copyItem{rev: ev.GetRevision()}
			switch ev.GetOp() {
			case cdcv1.Op_OP_PUT:
				it.put, it.value = true, ev.GetValue()
				if ev.GetExpireTime() != nil {
					it.expire = ev.GetExpireTime().AsTime()
				}
			case cdcv1.Op_OP_DELETE, cdcv1.Op_OP_EXPIRE:
			default:
				return true
			}
			m.set(ev.GetKey(), it)
			m.last = ev.GetRevision()
		}
	default:
		return true
	}
	return false
}

// FuzzApplyCopy: whatever a source (or anything that answers as one)
// sends on a Copy stream, the target applies it without panicking, refuses
// every message that breaks the protocol, never reports a revision before
// the snapshot is done or a revision going back, and ends up holding, per
// key, the newest put the source sent unless a newer removal or its expiry
// followed. The input is a sequence of length-prefixed CopyResponse
// messages, as the stream's frames carry them.
func FuzzApplyCopy(f *testing.F) {
	now := time.Date(2026, 7, 8, 9, 10, 11, 0, time.UTC)
	stream := func(msgs ...*clusterv1.CopyResponse) []byte {
		var b []byte
		for _, msg := range msgs {
			m, err := proto.Marshal(msg)
			if err != nil {
				f.Fatal(err)
			}
			b = protowire.AppendBytes(b, m)
		}
		return b
	}
	// Built here rather than with the helpers of other tests, so that the
	// seeds stay what they are when those change.
	entries := func(es ...*clusterv1.CopyEntry) *clusterv1.CopyResponse {
		return &clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_Entries{Entries: &clusterv1.CopyEntries{Entries: es}}}
	}
	snapshotDone := func(rev int64) *clusterv1.CopyResponse {
		return &clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_SnapshotDone{SnapshotDone: &clusterv1.SnapshotDone{Revision: rev}}}
	}
	changes := func(through, source int64, evs ...*cdcv1.ChangeEvent) *clusterv1.CopyResponse {
		return &clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_Changes{Changes: &clusterv1.CopyChanges{Events: evs, Revision: through, SourceRevision: source}}}
	}
	event := func(rev int64, op cdcv1.Op, key string) *cdcv1.ChangeEvent {
		ev := &cdcv1.ChangeEvent{Revision: rev, Op: op, Key: key}
		if op == cdcv1.Op_OP_PUT {
			ev.Value = []byte(key + "-changed")
		}
		return ev
	}
	entry := func(key string, rev int64, expire time.Time) *clusterv1.CopyEntry {
		e := &clusterv1.CopyEntry{Key: key, Value: []byte(key + "-value"), Revision: rev}
		if !expire.IsZero() {
			e.ExpireTime = timestamppb.New(expire)
		}
		return e
	}
	put, del, expire := cdcv1.Op_OP_PUT, cdcv1.Op_OP_DELETE, cdcv1.Op_OP_EXPIRE
	f.Add(stream(
		entries(entry("a", 3, time.Time{}), entry("b", 4, now.Add(time.Hour)), entry("gone", 2, now.Add(-time.Second))),
		snapshotDone(5),
		changes(9, 9, event(6, del, "a"), event(7, put, "b"), event(8, expire, "c")),
		changes(12, 400),
	))
	f.Add(stream(entries(entry("k", 12, time.Time{})), snapshotDone(10), changes(12, 12, event(11, put, "k"), event(12, del, "k"))))
	f.Add(stream(snapshotDone(5), changes(5, 5, event(5, put, "k"))))
	f.Add(stream(changes(3, 3, event(2, put, "k"))))
	f.Add(stream(snapshotDone(1), snapshotDone(2)))
	f.Add(stream(snapshotDone(1), changes(2, 2, event(2, cdcv1.Op_OP_UNSPECIFIED, "k"))))
	f.Add(stream(&clusterv1.CopyResponse{}))
	f.Add(stream(entries(entry("far", 1, time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC))), snapshotDone(1)))
	f.Fuzz(func(t *testing.T, data []byte) {
		st := store.New(store.WithClock(func() time.Time { return now }))
		defer st.Close()
		a := newApplier(st, func() time.Time { return now })
		model := &copyModel{keys: map[string]copyItem{}}
		var reached int64
		for len(data) > 0 {
			frame, n := protowire.ConsumeBytes(data)
			if n < 0 {
				break
			}
			data = data[n:]
			msg := new(clusterv1.CopyResponse)
			if err := proto.Unmarshal(frame, msg); err != nil {
				break // the stream fails before the applier sees it
			}
			refuse := model.apply(msg)
			err := a.apply(msg)
			if refuse && err == nil {
				t.Fatalf("applied %v, which breaks the protocol", msg)
			}
			if err != nil {
				if !refuse && !errors.Is(err, store.ErrInvalidOptions) {
					t.Fatalf("refused %v: %v", msg, err)
				}
				if !refuse {
					return // the store refused an item; what it holds then is its own business
				}
				break
			}
			rev := a.revision()
			if !model.done && rev != 0 || rev < reached || model.done && rev < model.last {
				t.Fatalf("after %v: revision %d (was %d, last change %d)", msg, rev, reached, model.last)
			}
			reached = rev
		}

		live := 0
		for key, it := range model.keys {
			e, ok := st.Get(key)
			want := it.put && (it.expire.IsZero() || it.expire.After(now))
			if ok != want || ok && !bytes.Equal(e.Value, it.value) {
				t.Fatalf("key %q: holds %q (%v), want %q (%v) from %+v", key, e.Value, ok, it.value, want, it)
			}
			if want {
				live++
			}
		}
		if st.Len() != live {
			t.Fatalf("the store holds %d keys, want %d", st.Len(), live)
		}
	})
}
