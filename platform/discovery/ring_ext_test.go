package discovery_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fluxkv/fluxkv/platform/discovery"
)

// currentRing reads RingCurrentKey and its version (how often it was
// written since it was created); nil and 0 while it is absent.
func currentRing(t *testing.T, client *clientv3.Client) (*discovery.RingRecord, int64) {
	t.Helper()
	resp, err := client.Get(context.Background(), discovery.RingCurrentKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0
	}
	var r discovery.RingRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &r); err != nil {
		t.Fatalf("ring record %q: %v", resp.Kvs[0].Value, err)
	}
	return &r, resp.Kvs[0].Version
}

func TestAddAndRemoveMemberWriteTheRing(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx := context.Background()
	w := discovery.NewWatcher(client, quiet)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	steps := []struct {
		do      func() error
		epoch   int64
		members []string
	}{
		{func() error { _, err := discovery.AddMember(ctx, client, "b", false); return err }, 1, []string{"b"}},
		{func() error { _, err := discovery.AddMember(ctx, client, "a", false); return err }, 2, []string{"a", "b"}},
		// Adding a member again changes nothing.
		{func() error { _, err := discovery.AddMember(ctx, client, "a", false); return err }, 2, []string{"a", "b"}},
		{func() error { return discovery.RemoveMember(ctx, client, "b") }, 3, []string{"a"}},
		// Removing one that is not a member changes nothing either.
		{func() error { return discovery.RemoveMember(ctx, client, "zz") }, 3, []string{"a"}},
	}
	for i, tt := range steps {
		if err := tt.do(); err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		got, _ := currentRing(t, client)
		if got == nil || got.Epoch != tt.epoch || !slices.Equal(got.Members, tt.members) {
			t.Fatalf("#%d: got ring %+v, want epoch %d, members %v", i, got, tt.epoch, tt.members)
		}
		waitFor(t, w, fmt.Sprintf("#%d in the snapshot", i), func(s *discovery.Snapshot) bool {
			return s.Epoch() == tt.epoch && slices.Equal(s.RingMembers(), tt.members) && slices.Equal(s.MemberIDs(), tt.members)
		})
	}

	// A view from before a removal is stale: MarkData refuses it, as it
	// refuses one from before a join.
	before := w.Snapshot().Revision
	if _, err := discovery.AddMember(ctx, client, "c", false); err != nil {
		t.Fatal(err)
	}
	if err := discovery.RemoveMember(ctx, client, "c"); err != nil {
		t.Fatal(err)
	}
	if err := discovery.MarkData(ctx, client, "a", before); !errors.Is(err, discovery.ErrMembersChanged) {
		t.Fatalf("marking data from a view before a join and a removal: got %v, want ErrMembersChanged", err)
	}
}

// TestConcurrentJoinsSerialize: joins racing each other each build on the
// ring the one before left, so every one lands with an epoch of its own.
func TestConcurrentJoinsSerialize(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 8
	var ids []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("node-%d", i))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			added, err := discovery.AddMember(ctx, client, id, false)
			if err == nil && !added {
				err = fmt.Errorf("%s not added", id)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	got, version := currentRing(t, client)
	if got == nil || got.Epoch != n || !slices.Equal(got.Members, ids) || version != n {
		t.Fatalf("after %d concurrent joins: ring %+v written %d times, want epoch %d with %v written %d times", n, got, version, n, ids, n)
	}
	// Every write of the record, in order: epochs 1..n, each one member more.
	resp, err := client.Get(ctx, discovery.RingCurrentKey)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var seen []discovery.RingRecord
	for wr := range client.Watch(wctx, discovery.RingCurrentKey, clientv3.WithRev(resp.Kvs[0].CreateRevision)) {
		if err := wr.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range wr.Events {
			var r discovery.RingRecord
			if err := json.Unmarshal(ev.Kv.Value, &r); err != nil {
				t.Fatal(err)
			}
			seen = append(seen, r)
		}
		if len(seen) >= n {
			wcancel()
		}
	}
	if len(seen) != n {
		t.Fatalf("saw %d writes of the ring, want %d", len(seen), n)
	}
	for i, r := range seen {
		if r.Epoch != int64(i+1) || len(r.Members) != i+1 || (i > 0 && !isSubset(seen[i-1].Members, r.Members)) {
			t.Errorf("#%d: got %+v after %+v, want epoch %d adding one member", i, r, seen[max(i-1, 0)], i+1)
		}
	}
}

func isSubset(a, b []string) bool {
	for _, id := range a {
		if !slices.Contains(b, id) {
			return false
		}
	}
	return true
}

// TestMigrateRingOnce: nodes of a cluster created before ring records
// start at once; exactly one writes epoch 1 over the existing members.
func TestMigrateRingOnce(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if migrated, err := discovery.MigrateRing(ctx, client); err != nil || migrated {
		t.Fatalf("migrating a cluster without members: got %v, %v; want nothing done", migrated, err)
	}
	if got, _ := currentRing(t, client); got != nil {
		t.Fatalf("a cluster without members got a ring: %+v", got)
	}
	for _, id := range []string{"c", "a", "b"} {
		if _, err := client.Put(ctx, discovery.MemberKey(id), `{"id":"`+id+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	const n = 6
	migrated := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { migrated[i], errs[i] = discovery.MigrateRing(ctx, client) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if count := len(slices.DeleteFunc(migrated, func(m bool) bool { return !m })); count != 1 {
		t.Errorf("%d of %d concurrent migrations wrote the ring, want 1", count, n)
	}
	got, version := currentRing(t, client)
	if got == nil || got.Epoch != 1 || !slices.Equal(got.Members, []string{"a", "b", "c"}) || version != 1 {
		t.Fatalf("after migrating: ring %+v written %d times, want epoch 1 over a, b, c written once", got, version)
	}
	if again, err := discovery.MigrateRing(ctx, client); err != nil || again {
		t.Fatalf("migrating again: got %v, %v; want nothing done", again, err)
	}
	if _, err := discovery.AddMember(ctx, client, "d", false); err != nil {
		t.Fatal(err)
	}
	if got, _ := currentRing(t, client); got.Epoch != 2 || !slices.Equal(got.Members, []string{"a", "b", "c", "d"}) {
		t.Fatalf("joining after the migration: got %+v, want epoch 2 over a, b, c, d", got)
	}
}

// syncBuffer is a log destination written by the watcher's goroutine and
// read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestSnapshotRingRecords: the snapshot routes by the current ring record
// once there is one and by the members before; a record that breaks the
// format is logged and skipped.
func TestSnapshotRingRecords(t *testing.T) {
	t.Parallel()
	client := startEtcd(t)
	ctx := context.Background()
	put := func(key, value string) {
		t.Helper()
		if _, err := client.Put(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	// Loaded at start, a bad record is skipped: the members are the ring.
	put(discovery.MemberKey("m1"), `{"id":"m1"}`)
	put(discovery.MemberKey("m2"), `{"id":"m2"}`)
	put(discovery.RingCurrentKey, `{"epoch": 0, "members": ["m1"]}`)
	var log syncBuffer
	w := discovery.NewWatcher(client, slog.New(slog.NewTextHandler(&log, nil)))
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if s := w.Snapshot(); s.Current != nil || s.Epoch() != 0 || !slices.Equal(s.RingMembers(), []string{"m1", "m2"}) {
		t.Fatalf("with a bad ring record at start: got current %+v, ring %v; want none, and the members", s.Current, s.RingMembers())
	}
	if !strings.Contains(log.String(), discovery.RingCurrentKey) {
		t.Errorf("the bad record at start was not logged:\n%s", log.String())
	}

	put(discovery.RingCurrentKey, `{"epoch": 3, "members": ["x", "y"]}`)
	waitFor(t, w, "epoch 3", func(s *discovery.Snapshot) bool {
		return s.Epoch() == 3 && slices.Equal(s.RingMembers(), []string{"x", "y"}) && slices.Equal(s.MemberIDs(), []string{"m1", "m2"})
	})

	bad := []string{
		`not json`,
		`{"epoch": 4, "members": ["y", "x"]}`,
		`{"epoch": 4, "members": ["x", "x"]}`,
		`{"epoch": 4, "members": ["x", ""]}`,
		`{"members": ["x"]}`,
	}
	for i, value := range bad {
		// Whatever comes after a bad record shows it was applied: it left
		// the ring as it was, and a line in the log.
		lines := strings.Count(log.String(), "\n")
		put(discovery.RingCurrentKey, value)
		marker := fmt.Sprintf("marker-%d", i)
		put(discovery.GatewaysPrefix+marker, `{"address":"127.0.0.1:1"}`)
		waitFor(t, w, fmt.Sprintf("#%d applied", i), func(s *discovery.Snapshot) bool {
			_, ok := s.Gateways[marker]
			return ok
		})
		if s := w.Snapshot(); s.Epoch() != 3 || !slices.Equal(s.RingMembers(), []string{"x", "y"}) {
			t.Errorf("#%d: after %s: got epoch %d, ring %v; want epoch 3 over x, y", i, value, s.Epoch(), s.RingMembers())
		}
		if got := strings.Count(log.String(), "\n"); got != lines+1 {
			t.Errorf("#%d: %s was not logged once:\n%s", i, value, log.String())
		}
	}

	put(discovery.RingNextKey, `{"epoch": 4, "members": ["x", "y", "z"], "change": {"add": "z"}}`)
	waitFor(t, w, "the next ring", func(s *discovery.Snapshot) bool {
		return s.Next != nil && s.Next.Epoch == 4 && slices.Equal(s.Next.Members, []string{"x", "y", "z"}) &&
			s.Next.Change != nil && s.Next.Change.Add == "z" && s.Epoch() == 3
	})
	if _, err := client.Delete(ctx, discovery.RingNextKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "no next ring", func(s *discovery.Snapshot) bool { return s.Next == nil })
	// Without a record, the members are the ring again.
	if _, err := client.Delete(ctx, discovery.RingCurrentKey); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, "routing by the members", func(s *discovery.Snapshot) bool {
		return s.Current == nil && slices.Equal(s.RingMembers(), []string{"m1", "m2"})
	})
}
