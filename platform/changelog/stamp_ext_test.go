package changelog_test

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/store"
)

// stampEpoch is the epoch movedStamp stamps every record with.
const stampEpoch = 7

// movedStamp marks the keys under moved/ internal, as a node marks the
// keys it holds but does not own by the ring it routes by.
func movedStamp(key string) (int64, bool) {
	return stampEpoch, strings.HasPrefix(key, "moved/")
}

// stampedChange is one change the stamp tests make, in revision order from 1.
type stampedChange struct {
	op  cdcv1.Op
	key string
}

// stampedChanges starts and ends with an internal record and has some in
// the middle, of both ops.
var stampedChanges = []stampedChange{
	{cdcv1.Op_OP_PUT, "moved/x"},
	{cdcv1.Op_OP_PUT, "a/1"},
	{cdcv1.Op_OP_PUT, "moved/y"},
	{cdcv1.Op_OP_DELETE, "moved/x"},
	{cdcv1.Op_OP_PUT, "a/2"},
	{cdcv1.Op_OP_DELETE, "a/1"},
	{cdcv1.Op_OP_PUT, "a/3"},
	{cdcv1.Op_OP_PUT, "moved/z"},
}

// makeStampedChanges applies stampedChanges through put and del.
func makeStampedChanges(t *testing.T, put func(key string) error, del func(key string) error) {
	t.Helper()
	for _, c := range stampedChanges {
		var err error
		if c.op == cdcv1.Op_OP_PUT {
			err = put(c.key)
		} else {
			err = del(c.key)
		}
		if err != nil {
			t.Fatalf("%s %s: %v", c.op, c.key, err)
		}
	}
}

// checkStamped reads the events after revision from+1 through the last of
// want from r, and holds each, and the record it carries, to the change it
// records: Internal on the event and in the record, and the record's epoch.
func checkStamped(t *testing.T, r *changelog.Reader, from int64, want []stampedChange, epoch int64, internal func(string) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []changelog.Event
	for len(got) < len(want) {
		events, err := r.Next(ctx, 3) // several reads, some crossing internal records
		if err != nil {
			t.Fatalf("next after %d events: %v", len(got), err)
		}
		got = append(got, events...)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d", len(got), len(want))
	}
	for i, e := range got {
		w, rev := want[i], from+int64(i)+1
		wantInternal := internal(w.key)
		if e.Revision != rev || e.Key != w.key || e.Op != w.op {
			t.Errorf("event %d: got %s %s at %d, want %s %s at %d", i, e.Op, e.Key, e.Revision, w.op, w.key, rev)
			continue
		}
		if e.Internal != wantInternal {
			t.Errorf("revision %d (%s %s): Event.Internal = %v, want %v", rev, w.op, w.key, e.Internal, wantInternal)
		}
		var ev cdcv1.ChangeEvent
		if err := proto.Unmarshal(e.Data, &ev); err != nil {
			t.Fatalf("revision %d: %v", rev, err)
		}
		if ev.GetRevision() != rev || ev.GetKey() != w.key || ev.GetOp() != w.op || ev.GetNodeId() != "n1" {
			t.Errorf("revision %d: record %v does not match event %+v", rev, &ev, e)
		}
		if ev.GetEpoch() != epoch {
			t.Errorf("revision %d (%s): record epoch %d, want %d", rev, w.key, ev.GetEpoch(), epoch)
		}
		if ev.GetInternal() != wantInternal {
			t.Errorf("revision %d (%s): record internal %v, want %v", rev, w.key, ev.GetInternal(), wantInternal)
		}
	}
}

func isMoved(key string) bool { return strings.HasPrefix(key, "moved/") }

// TestLogStampsRecords: the log's stamp sets every record's epoch and
// internal flag, and readers see Internal for exactly the stamped keys,
// whether they read from the in-memory tail or from the segment files,
// after a restart too. Replay does not care: internal records are state.
func TestLogStampsRecords(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	n, err := open(t, fsys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.close) // closed below already: Close is idempotent
	n.log.SetStamp(movedStamp)
	n.log.Start()
	makeStampedChanges(t, func(key string) error {
		_, err := n.put(key, "v-"+key)
		return err
	}, n.del)
	last := int64(len(stampedChanges))
	if got := n.log.Durable(); got != last {
		t.Fatalf("durable %d after %d changes", got, last)
	}

	t.Run("tail", func(t *testing.T) {
		r, err := n.log.NewReader(0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		checkStamped(t, r, 0, stampedChanges, stampEpoch, isMoved)
	})
	t.Run("tail from the middle", func(t *testing.T) {
		r, err := n.log.NewReader(3)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		checkStamped(t, r, 3, stampedChanges[3:], stampEpoch, isMoved)
	})
	want := contents(n.store)
	n.close()

	// Reopened, the log's tail holds nothing before the restart, so
	// readers get those events from the segment files. No stamp is set:
	// what they report comes from the records.
	again := start(t, fsys)
	if got := contents(again.store); !maps.Equal(got, want) || len(got) != 4 {
		t.Errorf("after replay: got %v, want %v (internal records are replayed like any other)", got, want)
	}
	t.Run("files after a restart", func(t *testing.T) {
		r, err := again.log.NewReader(0)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		checkStamped(t, r, 0, stampedChanges, stampEpoch, isMoved)
	})
	t.Run("files from the middle after a restart", func(t *testing.T) {
		r, err := again.log.NewReader(4)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		checkStamped(t, r, 4, stampedChanges[4:], stampEpoch, isMoved)
	})
	// Without a stamp, a record is neither internal nor of any epoch, even
	// for a key an earlier stamp marked.
	if _, err := again.put("moved/after", "v"); err != nil {
		t.Fatal(err)
	}
	t.Run("unstamped record after a restart", func(t *testing.T) {
		r, err := again.log.NewReader(last)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		checkStamped(t, r, last, []stampedChange{{cdcv1.Op_OP_PUT, "moved/after"}}, 0, func(string) bool { return false })
	})
}

// TestLogStampsRecordsReadFromFiles: with a tail too small to hold them,
// a reader of the open log gets the events from the segment files, and
// Internal with them.
func TestLogStampsRecordsReadFromFiles(t *testing.T) {
	t.Parallel()
	n, err := open(t, newMemFS(), changelog.WithEventTail(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	n.log.SetStamp(movedStamp)
	n.log.Start()
	t.Cleanup(n.close)
	makeStampedChanges(t, func(key string) error {
		_, err := n.put(key, "v")
		return err
	}, n.del)
	for _, after := range []int64{0, 2, 3} {
		r, err := n.log.NewReader(after)
		if err != nil {
			t.Fatal(err)
		}
		checkStamped(t, r, after, stampedChanges[after:], stampEpoch, isMoved)
		r.Close()
	}
}

// TestStandaloneTailStampsEvents: a node without a log stamps its tail's
// events the same way.
func TestStandaloneTailStampsEvents(t *testing.T) {
	t.Parallel()
	tail := changelog.NewTail("n1", 0, 0, 0)
	defer tail.Close()
	tail.SetStamp(movedStamp)
	st := store.New(store.WithChangeHook(tail.Append))
	defer st.Close()
	makeStampedChanges(t, func(key string) error {
		_, err := st.Put(key, []byte("v"), store.PutOptions{})
		return err
	}, func(key string) error {
		_, err := st.Delete(key, store.Condition{})
		return err
	})
	if got, want := tail.Durable(), int64(len(stampedChanges)); got != want {
		t.Fatalf("durable %d after %d changes", got, want)
	}
	for _, after := range []int64{0, 3} {
		r, err := tail.NewReader(after)
		if err != nil {
			t.Fatal(err)
		}
		checkStamped(t, r, after, stampedChanges[after:], stampEpoch, isMoved)
		r.Close()
	}
}
