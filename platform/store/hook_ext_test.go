package store_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/platform/store"
)

// recorder is a change hook that keeps what it is told. The store calls
// hooks one at a time, so it needs no lock of its own; the race detector
// checks that promise.
type recorder struct {
	changes []store.Change
}

func (r *recorder) hook(c store.Change) { r.changes = append(r.changes, c) }

// take returns the changes recorded since the last call.
func (r *recorder) take() []store.Change {
	c := r.changes
	r.changes = nil
	return c
}

func TestChangeHook(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	start := clock.Now()
	var rec recorder
	s := newStore(t, store.WithClock(clock.Now), store.WithChangeHook(rec.hook), store.WithShards(4))

	mustPut(t, s, "a", "1", store.PutOptions{})                      // 1
	mustPut(t, s, "b", "2", store.PutOptions{TTL: time.Second})      // 2
	mustPut(t, s, "c", "3", store.PutOptions{TTL: time.Second})      // 3
	mustPut(t, s, "d", "4", store.PutOptions{TTL: time.Second})      // 4
	mustPut(t, s, "e", "5", store.PutOptions{TTL: 10 * time.Second}) // 5
	if _, err := s.Delete("a", store.Condition{}); err != nil {      // 6
		t.Fatal(err)
	}
	if _, err := s.Put("b", nil, store.PutOptions{Condition: store.IfAbsent()}); !errors.Is(err, store.ErrConditionFailed) {
		t.Fatalf("conditional put: got %v, want %v", err, store.ErrConditionFailed)
	}
	if _, err := s.Delete("a", store.Condition{}); err != nil { // absent: nothing to report
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	s.Get("b")                                   // 7: lazy expiry
	mustPut(t, s, "c", "33", store.PutOptions{}) // 8: expiry, 9: put
	if res, err := s.Delete("d", store.IfPresent()); !errors.Is(err, store.ErrConditionFailed) || res.Revision != 10 {
		t.Fatalf("delete of expired key: got %+v, %v", res, err) // 10: expiry
	}
	mustPut(t, s, "f", "6", store.PutOptions{TTL: time.Second}) // 11
	clock.Advance(time.Second)
	if got := s.ExpireCycle(); got != 1 { // 12: active expiry of f
		t.Fatalf("expiry cycle: removed %d keys, want 1", got)
	}
	s.Get("f")
	s.Get("e")

	t1, t2 := start.Add(time.Second), start.Add(2*time.Second)
	tests := []struct {
		op      store.Op
		key     string
		value   string // of the change for puts, of Previous otherwise
		prevRev int64
		commit  time.Time
		expire  time.Time // of the put
	}{
		{store.OpPut, "a", "1", 0, start, time.Time{}},
		{store.OpPut, "b", "2", 0, start, t1},
		{store.OpPut, "c", "3", 0, start, t1},
		{store.OpPut, "d", "4", 0, start, t1},
		{store.OpPut, "e", "5", 0, start, start.Add(10 * time.Second)},
		{store.OpDelete, "a", "1", 1, start, time.Time{}},
		{store.OpExpire, "b", "2", 2, t1, time.Time{}},
		{store.OpExpire, "c", "3", 3, t1, time.Time{}},
		{store.OpPut, "c", "33", 0, t1, time.Time{}},
		{store.OpExpire, "d", "4", 4, t1, time.Time{}},
		{store.OpPut, "f", "6", 0, t1, t2},
		{store.OpExpire, "f", "6", 11, t2, time.Time{}},
	}
	changes := rec.take()
	if len(changes) != len(tests) {
		t.Fatalf("got %d changes, want %d: %+v", len(changes), len(tests), changes)
	}
	for i, tt := range tests {
		c := changes[i]
		value := string(c.Value)
		if tt.op != store.OpPut {
			value = string(c.Previous.Value)
		}
		got := fmt.Sprintf("%v %d %s %s prev@%d had=%v", c.Op, c.Revision, c.Key, value, c.Previous.ModRevision, c.HadPrevious)
		want := fmt.Sprintf("%v %d %s %s prev@%d had=%v", tt.op, i+1, tt.key, tt.value, tt.prevRev, tt.prevRev != 0)
		if got != want {
			t.Errorf("#%d: got %v, want %v", i, got, want)
		}
		if !c.CommitTime.Equal(tt.commit) || !c.ExpireTime.Equal(tt.expire) {
			t.Errorf("#%d: got commit %v expire %v, want %v and %v", i, c.CommitTime, c.ExpireTime, tt.commit, tt.expire)
		}
	}
	if got := s.Revision(); got != int64(len(tests)) {
		t.Errorf("got revision %d, want %d", got, len(tests))
	}
}

func TestActiveExpiryBounded(t *testing.T) {
	t.Parallel()
	const keys, sample = 1000, 5
	clock := newFakeClock()
	var rec recorder
	s := newStore(t, store.WithClock(clock.Now), store.WithChangeHook(rec.hook),
		store.WithShards(2), store.WithExpirySample(sample))
	for i := range keys {
		ttl := time.Second
		if i%2 == 0 {
			ttl = time.Hour
		}
		mustPut(t, s, fmt.Sprintf("k%04d", i), "v", store.PutOptions{TTL: ttl})
	}
	rec.take()
	clock.Advance(time.Second)

	// Half the keys are expired, so every sample is worth repeating and a
	// cycle stops only at its budget: 4 rounds of 5 keys for each of 2 shards.
	const budget = 4 * sample * 2
	removed, cycles := 0, 0
	for removed < keys/2 {
		n := s.ExpireCycle()
		if n > budget {
			t.Fatalf("cycle %d removed %d keys, more than its budget of %d", cycles, n, budget)
		}
		removed += n
		cycles++
		if cycles > 10_000 {
			t.Fatalf("active expiry stalled after removing %d keys", removed)
		}
	}
	if got := s.Len(); got != keys/2 {
		t.Errorf("got len %d, want %d", got, keys/2)
	}
	changes := rec.take()
	for i, c := range changes {
		if c.Op != store.OpExpire || c.Revision != int64(keys+i+1) || !c.Previous.ExpireTime.Equal(clock.Now()) {
			t.Errorf("#%d: got %v %d %q expiring %v", i, c.Op, c.Revision, c.Key, c.Previous.ExpireTime)
		}
	}
	if len(changes) != keys/2 {
		t.Errorf("got %d expiries, want %d", len(changes), keys/2)
	}
}

func TestExpiryLoop(t *testing.T) {
	t.Parallel()
	s := newStore(t, store.WithExpiryInterval(time.Millisecond))
	s.Start()
	s.Start() // a second Start must not start a second loop
	for i := range 100 {
		mustPut(t, s, fmt.Sprintf("k%d", i), "v", store.PutOptions{TTL: time.Millisecond})
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Len() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("expiry loop left %d keys", s.Len())
		}
		time.Sleep(time.Millisecond)
	}
}
