package kvnode

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/platform/store"
)

// TestCopyCompactedTail: a node without an append-only file holds only a
// bounded tail of changes in memory; when the changes after the snapshot's
// revision fall out of it before the copy reads them, the copy ends with
// ABORTED (restart the copy) instead of skipping them.
func TestCopyCompactedTail(t *testing.T) {
	t.Parallel()
	tail := changelog.NewTail("node-a", 0, 4, 0)
	st := store.New(store.WithChangeHook(tail.Append))
	defer st.Close()
	req := &clusterv1.CopyRequest{FromMembers: []string{"node-a"}, ToMembers: []string{"node-a", "node-c"}, Target: "node-c"}
	from, _ := ring.New(req.FromMembers)
	to, _ := ring.New(req.ToMembers)
	var moving []string
	for i := 0; len(moving) < 11; i++ {
		if key := fmt.Sprintf("k/%d", i); from.Owner(key) == "node-a" && to.Owner(key) == "node-c" {
			moving = append(moving, key)
		}
	}
	if _, err := st.Put(moving[0], []byte("v"), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}

	// An unbuffered queue holds the reader back while the first response
	// is being sent: the writes made then push every change after the
	// snapshot's revision out of the four-event tail before it reads one.
	s := &handoffService{self: "node-a", store: st, events: tail, router: &router{self: "node-a"},
		limits: watchConfig{progress: time.Hour, buffer: 0, slow: time.Hour}}
	var got []*clusterv1.CopyResponse
	err := s.copy(context.Background(), req, func(resp *clusterv1.CopyResponse) error {
		if len(got) == 0 {
			for _, key := range moving[1:] {
				if _, err := st.Put(key, []byte("v"), store.PutOptions{}); err != nil {
					return err
				}
			}
		}
		got = append(got, resp)
		return nil
	})
	if code := connect.CodeOf(err); code != connect.CodeAborted {
		t.Fatalf("got %v (%v), want aborted", code, err)
	}
	if len(got) != 2 || got[0].GetEntries() == nil || got[1].GetSnapshotDone().GetRevision() != 1 {
		t.Errorf("got %v, want the snapshot's entries and snapshot_done at revision 1 before the error", got)
	}
}

// fakeCopyStream replays responses to an applier.
type fakeCopyStream struct {
	resps []*clusterv1.CopyResponse
	i     int
}

func (f *fakeCopyStream) Receive() bool {
	f.i++
	return f.i <= len(f.resps)
}
func (f *fakeCopyStream) Msg() *clusterv1.CopyResponse { return f.resps[f.i-1] }
func (f *fakeCopyStream) Err() error                   { return nil }

func entries(es ...*clusterv1.CopyEntry) *clusterv1.CopyResponse {
	return &clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_Entries{Entries: &clusterv1.CopyEntries{Entries: es}}}
}

func snapshotDone(rev int64) *clusterv1.CopyResponse {
	return &clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_SnapshotDone{SnapshotDone: &clusterv1.SnapshotDone{Revision: rev}}}
}

func changes(through int64, evs ...*cdcv1.ChangeEvent) *clusterv1.CopyResponse {
	return &clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_Changes{Changes: &clusterv1.CopyChanges{Events: evs, Revision: through}}}
}

func putEvent(rev int64, key, value string) *cdcv1.ChangeEvent {
	return &cdcv1.ChangeEvent{Revision: rev, Op: cdcv1.Op_OP_PUT, Key: key, Value: []byte(value)}
}

func removeEvent(rev int64, op cdcv1.Op, key string) *cdcv1.ChangeEvent {
	return &cdcv1.ChangeEvent{Revision: rev, Op: op, Key: key}
}

// TestApplierOrder: the applier keeps per key the newest source revision
// it applied, so an entry or change that is not newer (a snapshot entry
// seen again as a change, or a change older than the entry the walk saw)
// changes nothing, and a removal takes effect only if it is newer.
func TestApplierOrder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		resps     []*clusterv1.CopyResponse
		want      map[string]string
		wantRev   int64
		wantError bool
	}{
		// The walk saw k at 12; the changes since 10 include older puts
		// and a delete, all superseded.
		{[]*clusterv1.CopyResponse{
			entries(&clusterv1.CopyEntry{Key: "k", Value: []byte("v12"), Revision: 12}),
			snapshotDone(10),
			changes(12, putEvent(11, "k", "v11"), removeEvent(12, cdcv1.Op_OP_DELETE, "k")),
		}, map[string]string{"k": "v12"}, 12, false},
		// A newer delete, expiry and put apply.
		{[]*clusterv1.CopyResponse{
			entries(&clusterv1.CopyEntry{Key: "a", Value: []byte("a"), Revision: 3}, &clusterv1.CopyEntry{Key: "b", Value: []byte("b"), Revision: 4}),
			snapshotDone(5),
			changes(9, removeEvent(6, cdcv1.Op_OP_DELETE, "a"), removeEvent(7, cdcv1.Op_OP_EXPIRE, "b"), putEvent(8, "c", "c8")),
		}, map[string]string{"c": "c8"}, 9, false},
		// A key deleted after the walk missed it is not resurrected by an
		// older put, nor is the same change applied twice.
		{[]*clusterv1.CopyResponse{
			snapshotDone(1),
			changes(3, putEvent(2, "k", "v2"), removeEvent(3, cdcv1.Op_OP_DELETE, "k")),
			changes(20),
		}, map[string]string{}, 20, false},
		// Protocol errors.
		{[]*clusterv1.CopyResponse{changes(3, putEvent(2, "k", "v"))}, map[string]string{}, 0, true},
		{[]*clusterv1.CopyResponse{snapshotDone(5), changes(5, putEvent(5, "k", "v"))}, map[string]string{}, 5, true},
		{[]*clusterv1.CopyResponse{snapshotDone(5), snapshotDone(6)}, map[string]string{}, 5, true},
	}
	for i, tt := range tests {
		st := store.New()
		rev, err := newApplier(st, time.Now).run(&fakeCopyStream{resps: tt.resps})
		if (err != nil) != tt.wantError || rev != tt.wantRev {
			t.Errorf("#%d: got revision %d, error %v; want %d, error %v", i, rev, err, tt.wantRev, tt.wantError)
		}
		got := map[string]string{}
		st.Range(func(e store.Entry) bool {
			got[e.Key] = string(e.Value)
			return true
		})
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("#%d: got %v, want %v", i, got, tt.want)
		}
		_ = st.Close()
	}
}
