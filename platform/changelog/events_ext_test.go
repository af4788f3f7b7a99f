package changelog_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/store"
)

// diskNode is a store and log on the real file system, so readers follow
// segments that grow while they read.
type diskNode struct {
	store *store.Store
	log   *changelog.Log
}

func startDisk(t *testing.T, dir string, opts ...changelog.Option) *diskNode {
	t.Helper()
	n := &diskNode{}
	log, err := changelog.Open(dir, "n1", opts...)
	if err != nil {
		t.Fatal(err)
	}
	n.log = log
	n.store = store.New(store.WithChangeHook(log.Append))
	if _, err := log.Replay(n.store); err != nil {
		t.Fatal(err)
	}
	log.Start()
	t.Cleanup(n.close)
	return n
}

func (n *diskNode) close() {
	_ = n.store.Close()
	_ = n.log.Close()
}

func (n *diskNode) write(t *testing.T, from, to int) {
	t.Helper()
	ctx := context.Background()
	for i := from; i < to; i++ {
		if err := n.log.Reserve(ctx); err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("k%03d", i%50)
		var rev int64
		if i%7 == 6 {
			res, err := n.store.Delete(key, store.Condition{})
			if err != nil {
				t.Fatal(err)
			}
			rev = res.Revision
		} else {
			res, err := n.store.Put(key, []byte(fmt.Sprint("v", i)), store.PutOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rev = res.Revision
		}
		if rev > 0 {
			if err := n.log.Wait(ctx, rev); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// readAll reads events until the reader has returned at least up to
// revision last, checking that they are consecutive after from and that
// each record decodes to the event it claims to be. It returns the last
// revision read.
func readAll(t *testing.T, r *changelog.Reader, from, last int64) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	next := from + 1
	for next <= last {
		events, err := r.Next(ctx, 37)
		if err != nil {
			t.Fatalf("next after %d: %v", next-1, err)
		}
		for _, e := range events {
			if e.Revision != next {
				t.Fatalf("got revision %d, want %d", e.Revision, next)
			}
			var ev cdcv1.ChangeEvent
			if err := proto.Unmarshal(e.Data, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.GetRevision() != e.Revision || ev.GetKey() != e.Key || ev.GetOp() != e.Op || ev.GetNodeId() != "n1" {
				t.Fatalf("revision %d: record %v does not match event %+v", e.Revision, &ev, e)
			}
			next++
		}
	}
	return next - 1
}

// TestReaderFollowsTailAndFiles reads every event once and in order, with a
// tail too small to hold them, so the reader moves between the files and
// memory, across a rewrite that happens while it reads.
func TestReaderFollowsTailAndFiles(t *testing.T) {
	t.Parallel()
	n := startDisk(t, t.TempDir(), changelog.WithEventTail(16, 0),
		changelog.WithSnapshot(func(fn func(store.Entry) bool) {}))
	n.write(t, 0, 300)
	r, err := n.log.NewReader(0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := readAll(t, r, 0, 100)
	// The open reader keeps the replaced segments as history.
	if err := n.log.Rewrite(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n.log.Oldest(); got != 1 {
		t.Fatalf("oldest with a reader at 100: got %d, want 1", got)
	}
	n.write(t, 300, 600)
	readAll(t, r, got, n.log.Durable())
}

// TestRewriteDropsWhatNoReaderNeeds: without readers a rewrite drops the
// events it replaces, and a reader starting before them gets a
// CompactedError naming the oldest revision left.
func TestRewriteDropsWhatNoReaderNeeds(t *testing.T) {
	t.Parallel()
	n := startDisk(t, t.TempDir(), changelog.WithSnapshot(func(fn func(store.Entry) bool) {}))
	n.write(t, 0, 100)
	last := n.log.Durable()
	if err := n.log.Rewrite(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n.log.Oldest(); got != last+1 {
		t.Fatalf("oldest after rewrite: got %d, want %d", got, last+1)
	}
	_, err := n.log.NewReader(5)
	var ce *changelog.CompactedError
	if !errors.As(err, &ce) || ce.Oldest != last+1 {
		t.Fatalf("reader from 5: got %v, want CompactedError{%d}", err, last+1)
	}
	r, err := n.log.NewReader(last)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n.write(t, 100, 120)
	readAll(t, r, last, n.log.Durable())
}

// TestRetentionKeepsHistoryUntilDone: the relay's checkpoint keeps events
// through rewrites, and once it moves past them the history goes.
func TestRetentionKeepsHistoryUntilDone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var done atomic.Int64
	n := startDisk(t, dir, changelog.WithRetention(done.Load), changelog.WithSnapshot(func(fn func(store.Entry) bool) {}))
	n.write(t, 0, 100)
	if err := n.log.Rewrite(context.Background()); err != nil {
		t.Fatal(err)
	}
	n.write(t, 100, 200)
	if err := n.log.Rewrite(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := n.log.Oldest(); got != 1 {
		t.Fatalf("oldest with the relay at 0: got %d, want 1", got)
	}
	r, err := n.log.NewReader(0)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, r, 0, n.log.Durable())
	r.Close()

	// The first rewrite replaced revisions 1 to 100ish; once the relay is
	// past them, the log drops them within a tick of its rewriter.
	done.Store(n.log.Durable())
	deadline := time.Now().Add(10 * time.Second)
	for n.log.Oldest() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("history was not dropped after the relay moved past it")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// History survives a restart: the manifest names it.
	n.write(t, 200, 210)
	oldest := n.log.Oldest()
	n.close()
	again := startDisk(t, dir)
	if got := again.log.Oldest(); got != oldest {
		t.Fatalf("oldest after restart: got %d, want %d", got, oldest)
	}
	r, err = again.log.NewReader(oldest - 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	readAll(t, r, oldest-1, again.log.Durable())
}

// TestStandaloneTail: a node without a log serves recent events from
// memory and says when a reader asks for more than it holds.
func TestStandaloneTail(t *testing.T) {
	t.Parallel()
	tail := changelog.NewTail("n1", 0, 10, 0)
	defer tail.Close()
	st := store.New(store.WithChangeHook(tail.Append))
	defer st.Close()
	r, err := tail.NewReader(0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := st.Put(fmt.Sprint("k", i), []byte("v"), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	readAll(t, r, 0, 5)
	r.Close()
	for i := range 20 {
		if _, err := st.Put(fmt.Sprint("k", i), []byte("v"), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = tail.NewReader(0)
	var ce *changelog.CompactedError
	if !errors.As(err, &ce) || ce.Oldest != 16 {
		t.Fatalf("reader from 0 after 25 events in a tail of 10: got %v, want CompactedError{16}", err)
	}
	if got := tail.Durable(); got != 25 {
		t.Fatalf("durable: got %d, want 25", got)
	}
}

// TestReaderEndsWhenTheLogCloses: a reader waiting for events gets
// ErrClosed instead of hanging.
func TestReaderEndsWhenTheLogCloses(t *testing.T) {
	t.Parallel()
	n := startDisk(t, t.TempDir())
	r, err := n.log.NewReader(0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := r.Next(context.Background(), 10)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	n.close()
	select {
	case err := <-errc:
		if !errors.Is(err, changelog.ErrClosed) {
			t.Fatalf("got %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Next did not return after Close")
	}
}
