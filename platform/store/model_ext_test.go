package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/platform/store"
)

// model is the store reduced to the obvious: a plain map, a revision
// counter, and a sorted slice of keys built on demand for scans.
type model struct {
	entries map[string]store.Entry
	rev     int64
	now     func() time.Time
}

func (m *model) expired(e store.Entry) bool {
	return !e.ExpireTime.IsZero() && !m.now().Before(e.ExpireTime)
}

// touch removes key if it has expired and returns the change that reports
// it, the way every store operation on one key begins.
func (m *model) touch(key string) []store.Change {
	e, ok := m.entries[key]
	if !ok || !m.expired(e) {
		return nil
	}
	delete(m.entries, key)
	m.rev++
	return []store.Change{{Op: store.OpExpire, Revision: m.rev, Key: key, Previous: e, HadPrevious: true}}
}

func (m *model) holds(c modelCond, e store.Entry, ok bool) bool {
	switch c.kind {
	case "absent":
		return !ok
	case "present":
		return ok
	case "rev":
		return ok && e.ModRevision == c.rev
	}
	return true
}

func (m *model) put(key, value string, opts store.PutOptions, c modelCond) (store.PutResult, error, []store.Change) {
	changes := m.touch(key)
	e, ok := m.entries[key]
	if !m.holds(c, e, ok) {
		return store.PutResult{Revision: m.rev, Previous: e, HadPrevious: ok}, store.ErrConditionFailed, changes
	}
	m.rev++
	next := store.Entry{Key: key, Value: []byte(value), ModRevision: m.rev}
	switch {
	case opts.TTL > 0:
		next.ExpireTime = m.now().Add(opts.TTL)
	case opts.KeepTTL:
		next.ExpireTime = e.ExpireTime
	}
	m.entries[key] = next
	changes = append(changes, store.Change{
		Op: store.OpPut, Revision: m.rev, Key: key, Value: next.Value,
		Previous: e, HadPrevious: ok, ExpireTime: next.ExpireTime,
	})
	return store.PutResult{Revision: m.rev, Previous: e, HadPrevious: ok}, nil, changes
}

func (m *model) delete(key string, c modelCond) (store.DeleteResult, error, []store.Change) {
	changes := m.touch(key)
	e, ok := m.entries[key]
	if !m.holds(c, e, ok) {
		return store.DeleteResult{Revision: m.rev, Previous: e}, store.ErrConditionFailed, changes
	}
	if !ok {
		return store.DeleteResult{Revision: m.rev}, nil, changes
	}
	delete(m.entries, key)
	m.rev++
	changes = append(changes, store.Change{Op: store.OpDelete, Revision: m.rev, Key: key, Previous: e, HadPrevious: true})
	return store.DeleteResult{Revision: m.rev, Previous: e, Deleted: true}, nil, changes
}

func (m *model) get(key string) (store.Entry, bool, []store.Change) {
	changes := m.touch(key)
	e, ok := m.entries[key]
	return e, ok, changes
}

// scan returns the live keys with prefix after the key after (all of them
// if first), and whether more than limit follow.
func (m *model) scan(prefix, after string, first bool, limit int) ([]store.Entry, bool) {
	var keys []string
	for k, e := range m.entries {
		if strings.HasPrefix(k, prefix) && (first || k > after) && !m.expired(e) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	more := len(keys) > limit
	if more {
		keys = keys[:limit]
	}
	entries := make([]store.Entry, len(keys))
	for i, k := range keys {
		entries[i] = m.entries[k]
	}
	return entries, more
}

type modelCond struct {
	kind string // "", "absent", "present" or "rev"
	rev  int64
}

func (c modelCond) condition() store.Condition {
	switch c.kind {
	case "absent":
		return store.IfAbsent()
	case "present":
		return store.IfPresent()
	case "rev":
		return store.IfRevision(c.rev)
	}
	return store.Condition{}
}

func sameEntry(a, b store.Entry) bool {
	return a.Key == b.Key && bytes.Equal(a.Value, b.Value) && a.ModRevision == b.ModRevision && a.ExpireTime.Equal(b.ExpireTime)
}

func sameChange(a, b store.Change) bool {
	return a.Op == b.Op && a.Revision == b.Revision && a.Key == b.Key && bytes.Equal(a.Value, b.Value) &&
		a.HadPrevious == b.HadPrevious && sameEntry(a.Previous, b.Previous) && a.ExpireTime.Equal(b.ExpireTime)
}

// TestModel runs random operations against the store and the model and
// compares every result and every reported change. A failure names its seed
// and step, and the run is deterministic, so it replays exactly.
func TestModel(t *testing.T) {
	t.Parallel()
	for _, shards := range []int{1, 4, 256} {
		for seed := uint64(1); seed <= 6; seed++ {
			t.Run(fmt.Sprintf("shards=%d/seed=%d", shards, seed), func(t *testing.T) {
				t.Parallel()
				t.Logf("seed %d", seed)
				runModel(t, seed, shards, 5000)
			})
		}
	}
}

func runModel(t *testing.T, seed uint64, shards, steps int) {
	r := rand.New(rand.NewPCG(seed, 0))
	clock := newFakeClock()
	var rec recorder
	s := newStore(t, store.WithClock(clock.Now), store.WithChangeHook(rec.hook), store.WithShards(shards))
	m := &model{entries: make(map[string]store.Entry), now: clock.Now}

	keys := []string{"", "a", "b", "ab"}
	for _, p := range []string{"a", "b", "c", "d"} {
		for i := range 10 {
			keys = append(keys, fmt.Sprintf("%s%d", p, i))
		}
	}
	prefixes := []string{"", "", "a", "b", "a1", "c", "e"}
	ttls := []time.Duration{0, 0, 0, 500 * time.Millisecond, time.Second, 2 * time.Second}

	pickCond := func(key string, allowAbsent bool) modelCond {
		switch n := r.IntN(6); {
		case n == 0 && allowAbsent:
			return modelCond{kind: "absent"}
		case n == 1:
			return modelCond{kind: "present"}
		case n == 2:
			if e, ok := m.entries[key]; ok && r.IntN(4) > 0 {
				return modelCond{kind: "rev", rev: e.ModRevision}
			}
			return modelCond{kind: "rev", rev: r.Int64N(m.rev + 2)}
		}
		return modelCond{}
	}
	checkChanges := func(step int, op string, want []store.Change) {
		t.Helper()
		got := rec.take()
		if len(got) != len(want) {
			t.Fatalf("step %d %s: got changes %+v, want %+v", step, op, got, want)
		}
		for i := range got {
			if !sameChange(got[i], want[i]) || !got[i].CommitTime.Equal(clock.Now()) {
				t.Fatalf("step %d %s: change #%d: got %+v, want %+v", step, op, i, got[i], want[i])
			}
		}
	}

	for step := range steps {
		key := keys[r.IntN(len(keys))]
		switch n := r.IntN(100); {
		case n < 35:
			value := fmt.Sprintf("v%d", step)
			opts := store.PutOptions{TTL: ttls[r.IntN(len(ttls))]}
			if opts.TTL == 0 {
				opts.KeepTTL = r.IntN(3) == 0
			}
			c := pickCond(key, true)
			opts.Condition = c.condition()
			op := fmt.Sprintf("put %q %+v", key, opts)
			got, gotErr := s.Put(key, []byte(value), opts)
			want, wantErr, changes := m.put(key, value, opts, c)
			if !errors.Is(gotErr, wantErr) || (wantErr == nil && gotErr != nil) {
				t.Fatalf("step %d %s: got error %v, want %v", step, op, gotErr, wantErr)
			}
			if got.Revision != want.Revision || got.HadPrevious != want.HadPrevious || !sameEntry(got.Previous, want.Previous) {
				t.Fatalf("step %d %s: got %+v, want %+v", step, op, got, want)
			}
			checkChanges(step, op, changes)
		case n < 50:
			c := pickCond(key, false)
			op := fmt.Sprintf("delete %q %v", key, c)
			got, gotErr := s.Delete(key, c.condition())
			want, wantErr, changes := m.delete(key, c)
			if !errors.Is(gotErr, wantErr) || (wantErr == nil && gotErr != nil) {
				t.Fatalf("step %d %s: got error %v, want %v", step, op, gotErr, wantErr)
			}
			if got.Revision != want.Revision || got.Deleted != want.Deleted || !sameEntry(got.Previous, want.Previous) {
				t.Fatalf("step %d %s: got %+v, want %+v", step, op, got, want)
			}
			checkChanges(step, op, changes)
		case n < 52:
			op := fmt.Sprintf("delete %q IfAbsent", key)
			if _, err := s.Delete(key, store.IfAbsent()); !errors.Is(err, store.ErrInvalidOptions) {
				t.Fatalf("step %d %s: got %v, want %v", step, op, err, store.ErrInvalidOptions)
			}
			checkChanges(step, op, nil)
		case n < 75:
			op := fmt.Sprintf("get %q", key)
			got, gotOK := s.Get(key)
			want, wantOK, changes := m.get(key)
			if gotOK != wantOK || (wantOK && !sameEntry(got, want)) {
				t.Fatalf("step %d %s: got %+v, %v, want %+v, %v", step, op, got, gotOK, want, wantOK)
			}
			checkChanges(step, op, changes)
		case n < 83:
			prefix := prefixes[r.IntN(len(prefixes))]
			limit := 1 + r.IntN(6)
			op := fmt.Sprintf("scan %q limit %d", prefix, limit)
			cursor, after, first := "", "", true
			for {
				page, err := s.Scan(store.ScanOptions{Prefix: prefix, Cursor: cursor, Limit: limit})
				if err != nil {
					t.Fatalf("step %d %s: %v", step, op, err)
				}
				want, more := m.scan(prefix, after, first, limit)
				if !slices.EqualFunc(page.Entries, want, sameEntry) || (page.NextCursor != "") != more {
					t.Fatalf("step %d %s after %q: got %+v (cursor %q), want %+v (more %v)",
						step, op, after, page.Entries, page.NextCursor, want, more)
				}
				if !more {
					break
				}
				cursor, after, first = page.NextCursor, want[len(want)-1].Key, false
			}
			checkChanges(step, op, nil)
		case n < 93:
			clock.Advance(time.Duration(r.IntN(5)) * 250 * time.Millisecond)
		default:
			// Active expiry picks keys at random, so the model accepts any
			// set of expired keys, as long as each was expired and the
			// revisions continue without a gap.
			removed := s.ExpireCycle()
			got := rec.take()
			if len(got) != removed {
				t.Fatalf("step %d expiry cycle: removed %d keys but reported %d", step, removed, len(got))
			}
			for _, c := range got {
				e, ok := m.entries[c.Key]
				if !ok || !m.expired(e) {
					t.Fatalf("step %d expiry cycle: expired %q, which the model holds as %+v, %v", step, c.Key, e, ok)
				}
				want := m.touch(c.Key)[0]
				if !sameChange(c, want) {
					t.Fatalf("step %d expiry cycle: got %+v, want %+v", step, c, want)
				}
			}
		}
		if got, want := s.Revision(), m.rev; got != want {
			t.Fatalf("step %d: got revision %d, want %d", step, got, want)
		}
		if got, want := s.Len(), len(m.entries); got != want {
			t.Fatalf("step %d: got len %d, want %d", step, got, want)
		}
	}
}
