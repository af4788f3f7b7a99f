package store_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fluxkv/fluxkv/platform/clock"
	"github.com/fluxkv/fluxkv/platform/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newFakeClock() *clock.Fake {
	return clock.NewFake(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
}

// newStore returns a store that is closed when the test ends.
func newStore(t testing.TB, opts ...store.Option) *store.Store {
	t.Helper()
	s := store.New(opts...)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustPut(t testing.TB, s *store.Store, key, value string, opts store.PutOptions) store.PutResult {
	t.Helper()
	res, err := s.Put(key, []byte(value), opts)
	if err != nil {
		t.Fatalf("put %q: %v", key, err)
	}
	return res
}

func TestOpString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		op   store.Op
		want string
	}{
		{store.OpPut, "PUT"},
		{store.OpDelete, "DELETE"},
		{store.OpExpire, "EXPIRE"},
		{store.Op(0), "Op(0)"},
		{store.Op(9), "Op(9)"},
	}
	for i, tt := range tests {
		if got := tt.op.String(); got != tt.want {
			t.Errorf("#%d: got %v, want %v", i, got, tt.want)
		}
	}
}

func TestGetPut(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	if _, ok := s.Get("a"); ok {
		t.Fatalf("get on empty store: found a key")
	}
	res := mustPut(t, s, "a", "1", store.PutOptions{})
	if res.Revision != 1 || res.HadPrevious {
		t.Fatalf("first put: got %+v, want revision 1 and no previous", res)
	}
	res = mustPut(t, s, "a", "2", store.PutOptions{})
	if res.Revision != 2 || !res.HadPrevious || string(res.Previous.Value) != "1" || res.Previous.ModRevision != 1 {
		t.Fatalf("second put: got %+v, want revision 2 and previous 1@1", res)
	}
	e, ok := s.Get("a")
	if !ok || e.Key != "a" || string(e.Value) != "2" || e.ModRevision != 2 || !e.ExpireTime.IsZero() {
		t.Fatalf("get: got %+v, %v", e, ok)
	}
	if got := s.Revision(); got != 2 {
		t.Errorf("revision: got %d, want 2", got)
	}
	if got := s.Len(); got != 1 {
		t.Errorf("len: got %d, want 1", got)
	}
}

func TestPutConditions(t *testing.T) {
	t.Parallel()
	// Each case runs against a store holding "k"=v@1 and "x" expired.
	tests := []struct {
		key      string
		cond     store.Condition
		wantErr  error
		wantRev  int64 // the result's revision
		wantPrev int64 // the result's Previous.ModRevision
	}{
		{"k", store.Condition{}, nil, 3, 1},
		{"k", store.IfAbsent(), store.ErrConditionFailed, 2, 1},
		{"k", store.IfPresent(), nil, 3, 1},
		{"k", store.IfRevision(1), nil, 3, 1},
		{"k", store.IfRevision(2), store.ErrConditionFailed, 2, 1},
		{"new", store.IfAbsent(), nil, 3, 0},
		{"new", store.IfPresent(), store.ErrConditionFailed, 2, 0},
		{"new", store.IfRevision(1), store.ErrConditionFailed, 2, 0},
		// The expiry of "x" takes revision 3 before the condition is checked.
		{"x", store.IfAbsent(), nil, 4, 0},
		{"x", store.IfPresent(), store.ErrConditionFailed, 3, 0},
		{"x", store.IfRevision(2), store.ErrConditionFailed, 3, 0},
	}
	for i, tt := range tests {
		clock := newFakeClock()
		s := newStore(t, store.WithClock(clock.Now))
		mustPut(t, s, "k", "v", store.PutOptions{})
		mustPut(t, s, "x", "v", store.PutOptions{TTL: time.Second})
		clock.Advance(time.Second)

		res, err := s.Put(tt.key, []byte("new"), store.PutOptions{Condition: tt.cond})
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("#%d: put %q %v: got error %v, want %v", i, tt.key, tt.cond, err, tt.wantErr)
			continue
		}
		if res.Revision != tt.wantRev {
			t.Errorf("#%d: got revision %d, want %d", i, res.Revision, tt.wantRev)
		}
		if res.Previous.ModRevision != tt.wantPrev || res.HadPrevious != (tt.wantPrev != 0) {
			t.Errorf("#%d: got previous %+v (had %v), want mod revision %d", i, res.Previous, res.HadPrevious, tt.wantPrev)
		}
		e, ok := s.Get(tt.key)
		if tt.wantErr == nil && (!ok || string(e.Value) != "new" || e.ModRevision != res.Revision) {
			t.Errorf("#%d: after put got %+v, %v, want new@%d", i, e, ok, res.Revision)
		}
		if tt.wantErr != nil && ok && string(e.Value) == "new" {
			t.Errorf("#%d: failed put changed the value", i)
		}
		if tt.wantErr != nil && s.Revision() != tt.wantRev {
			t.Errorf("#%d: failed put: got store revision %d, want %d", i, s.Revision(), tt.wantRev)
		}
	}
}

func TestPutInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key  string
		opts store.PutOptions
	}{
		{"k", store.PutOptions{TTL: -time.Second}},
		{"k", store.PutOptions{TTL: time.Second, KeepTTL: true}},
		{"\xff", store.PutOptions{}},
		{"k", store.PutOptions{ExpireAt: time.Now(), TTL: time.Second}},
		{"k", store.PutOptions{ExpireAt: time.Now(), KeepTTL: true}},
		{"k", store.PutOptions{ExpireAt: time.Unix(0, 0)}},
	}
	s := newStore(t)
	for i, tt := range tests {
		if _, err := s.Put(tt.key, nil, tt.opts); !errors.Is(err, store.ErrInvalidOptions) {
			t.Errorf("#%d: got %v, want %v", i, err, store.ErrInvalidOptions)
		}
	}
	if got := s.Revision(); got != 0 {
		t.Errorf("invalid puts: got revision %d, want 0", got)
	}
}

func TestTTL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ttl     time.Duration
		advance time.Duration
		want    bool // the key is still there
	}{
		{0, 1000 * time.Hour, true},
		{time.Second, 0, true},
		{time.Second, time.Second - time.Nanosecond, true},
		{time.Second, time.Second, false}, // expiry is inclusive
		{time.Second, time.Hour, false},
		{time.Nanosecond, time.Nanosecond, false},
	}
	for i, tt := range tests {
		clock := newFakeClock()
		start := clock.Now()
		s := newStore(t, store.WithClock(clock.Now))
		mustPut(t, s, "k", "v", store.PutOptions{TTL: tt.ttl})
		clock.Advance(tt.advance)

		page, err := s.Scan(store.ScanOptions{})
		if err != nil {
			t.Fatalf("#%d: scan: %v", i, err)
		}
		if got := len(page.Entries) == 1; got != tt.want {
			t.Errorf("#%d: scan: got present %v, want %v", i, got, tt.want)
		}
		if s.Len() != 1 {
			t.Errorf("#%d: scan removed an expired key", i)
		}
		e, ok := s.Get("k")
		if ok != tt.want {
			t.Errorf("#%d: get: got %v, want %v", i, ok, tt.want)
		}
		var wantExpire time.Time
		if tt.ttl > 0 {
			wantExpire = start.Add(tt.ttl)
		}
		if ok && !e.ExpireTime.Equal(wantExpire) {
			t.Errorf("#%d: got expire time %v, want %v", i, e.ExpireTime, wantExpire)
		}
		if wantLen := map[bool]int{true: 1, false: 0}[tt.want]; s.Len() != wantLen {
			t.Errorf("#%d: after get: got len %d, want %d", i, s.Len(), wantLen)
		}
	}
}

func TestPutTTLUpdates(t *testing.T) {
	t.Parallel()
	// Each case puts "k" with first, then again with second, one second later.
	tests := []struct {
		first, second store.PutOptions
		wantExpire    time.Duration // after the start; 0 means no TTL
	}{
		{store.PutOptions{TTL: time.Minute}, store.PutOptions{}, 0},
		{store.PutOptions{TTL: time.Minute}, store.PutOptions{KeepTTL: true}, time.Minute},
		{store.PutOptions{TTL: time.Minute}, store.PutOptions{TTL: time.Hour}, time.Second + time.Hour},
		{store.PutOptions{}, store.PutOptions{KeepTTL: true}, 0},
		{store.PutOptions{}, store.PutOptions{TTL: time.Hour}, time.Second + time.Hour},
		// An absolute expiry is kept as given, whatever the clock says.
		{store.PutOptions{TTL: time.Minute}, store.PutOptions{ExpireAt: newFakeClock().Now().Add(time.Hour)}, time.Hour},
		// The first put expires before the second, which finds the key absent.
		{store.PutOptions{TTL: time.Second}, store.PutOptions{KeepTTL: true}, 0},
	}
	for i, tt := range tests {
		clock := newFakeClock()
		start := clock.Now()
		s := newStore(t, store.WithClock(clock.Now))
		mustPut(t, s, "k", "1", tt.first)
		clock.Advance(time.Second)
		mustPut(t, s, "k", "2", tt.second)

		e, ok := s.Get("k")
		if !ok {
			t.Fatalf("#%d: key missing", i)
		}
		var want time.Time
		if tt.wantExpire > 0 {
			want = start.Add(tt.wantExpire)
		}
		if !e.ExpireTime.Equal(want) {
			t.Errorf("#%d: got %v, want %v", i, e.ExpireTime, want)
		}
	}
	// An absolute expiry already passed stores a key that is expired at once.
	clock := newFakeClock()
	s := newStore(t, store.WithClock(clock.Now))
	mustPut(t, s, "k", "v", store.PutOptions{ExpireAt: clock.Now()})
	if e, ok := s.Get("k"); ok {
		t.Errorf("expire at now: got %v, want the key expired", e)
	}
	// KeepTTL on an absent key means no TTL.
	s = newStore(t)
	mustPut(t, s, "k", "v", store.PutOptions{KeepTTL: true})
	if e, _ := s.Get("k"); !e.ExpireTime.IsZero() {
		t.Errorf("keep ttl on absent key: got expire time %v, want none", e.ExpireTime)
	}
}

func TestDelete(t *testing.T) {
	t.Parallel()
	// Each case runs against a store holding "k"@1 and "x" expired (@2).
	tests := []struct {
		key         string
		cond        store.Condition
		wantErr     error
		wantDeleted bool
		wantRev     int64
		wantPrev    int64
	}{
		{"k", store.Condition{}, nil, true, 3, 1},
		{"k", store.IfPresent(), nil, true, 3, 1},
		{"k", store.IfRevision(1), nil, true, 3, 1},
		{"k", store.IfRevision(7), store.ErrConditionFailed, false, 2, 1},
		{"k", store.IfAbsent(), store.ErrInvalidOptions, false, 0, 0},
		{"none", store.Condition{}, nil, false, 2, 0},
		{"none", store.IfPresent(), store.ErrConditionFailed, false, 2, 0},
		{"none", store.IfRevision(1), store.ErrConditionFailed, false, 2, 0},
		// The expiry of "x" takes revision 3; the delete then finds nothing.
		{"x", store.Condition{}, nil, false, 3, 0},
		{"x", store.IfPresent(), store.ErrConditionFailed, false, 3, 0},
	}
	for i, tt := range tests {
		clock := newFakeClock()
		s := newStore(t, store.WithClock(clock.Now))
		mustPut(t, s, "k", "v", store.PutOptions{})
		mustPut(t, s, "x", "v", store.PutOptions{TTL: time.Second})
		clock.Advance(time.Second)

		res, err := s.Delete(tt.key, tt.cond)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("#%d: delete %q %v: got error %v, want %v", i, tt.key, tt.cond, err, tt.wantErr)
			continue
		}
		if res.Deleted != tt.wantDeleted || res.Revision != tt.wantRev || res.Previous.ModRevision != tt.wantPrev {
			t.Errorf("#%d: got %+v, want deleted %v, revision %d, previous mod revision %d",
				i, res, tt.wantDeleted, tt.wantRev, tt.wantPrev)
		}
		if _, ok := s.Get(tt.key); ok == tt.wantDeleted && tt.key == "k" {
			t.Errorf("#%d: got present %v after delete", i, ok)
		}
		if got := s.Revision(); tt.wantErr == nil && got != tt.wantRev {
			t.Errorf("#%d: got store revision %d, want %d", i, got, tt.wantRev)
		}
	}
}

func TestApply(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	now := clock.Now()
	s := newStore(t, store.WithClock(clock.Now))
	changes := []store.Change{
		{Op: store.OpPut, Revision: 5, Key: "a", Value: []byte("1")},
		{Op: store.OpPut, Revision: 6, Key: "b", Value: []byte("2"), ExpireTime: now.Add(time.Minute)},
		{Op: store.OpPut, Revision: 7, Key: "c", Value: []byte("3"), ExpireTime: now},
		{Op: store.OpPut, Revision: 8, Key: "d", Value: []byte("4")},
		{Op: store.OpDelete, Revision: 9, Key: "d"},
		{Op: store.OpPut, Revision: 10, Key: "e", Value: []byte("5")},
		{Op: store.OpExpire, Revision: 11, Key: "e"},
		// A put of an already expired value also removes what was there.
		{Op: store.OpPut, Revision: 12, Key: "a", Value: []byte("9"), ExpireTime: now.Add(-time.Second)},
		{Op: store.OpPut, Revision: 13, Key: "a", Value: []byte("6")},
	}
	for i, c := range changes {
		if err := s.Apply(c); err != nil {
			t.Fatalf("#%d: apply: %v", i, err)
		}
	}
	tests := []struct {
		key    string
		want   string
		rev    int64
		expire time.Time
	}{
		{"a", "6", 13, time.Time{}},
		{"b", "2", 6, now.Add(time.Minute)},
		{"c", "", 0, time.Time{}},
		{"d", "", 0, time.Time{}},
		{"e", "", 0, time.Time{}},
	}
	for i, tt := range tests {
		e, ok := s.Get(tt.key)
		if ok != (tt.rev != 0) || string(e.Value) != tt.want || e.ModRevision != tt.rev || !e.ExpireTime.Equal(tt.expire) {
			t.Errorf("#%d: got %+v, %v, want %q@%d expiring %v", i, e, ok, tt.want, tt.rev, tt.expire)
		}
	}
	if got := s.Revision(); got != 13 {
		t.Errorf("got revision %d, want 13", got)
	}
	if err := s.Apply(store.Change{Op: store.OpPut, Revision: 3, Key: "z"}); err != nil {
		t.Fatalf("apply old revision: %v", err)
	}
	if got := s.Revision(); got != 13 {
		t.Errorf("apply of an older revision moved the counter back to %d", got)
	}
	if res := mustPut(t, s, "f", "x", store.PutOptions{}); res.Revision != 14 {
		t.Errorf("put after apply: got revision %d, want 14", res.Revision)
	}

	bad := []store.Change{
		{Op: 0, Revision: 20, Key: "a"},
		{Op: 9, Revision: 20, Key: "a"},
		{Op: store.OpPut, Revision: 0, Key: "a"},
		{Op: store.OpPut, Revision: 20, Key: "\xff"},
	}
	for i, c := range bad {
		if err := s.Apply(c); !errors.Is(err, store.ErrInvalidOptions) {
			t.Errorf("#%d: got %v, want %v", i, err, store.ErrInvalidOptions)
		}
	}
}

func TestClose(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	var changes []store.Change
	s := store.New(store.WithClock(clock.Now), store.WithChangeHook(func(c store.Change) {
		changes = append(changes, c)
	}))
	s.Start()
	mustPut(t, s, "k", "v", store.PutOptions{})
	mustPut(t, s, "x", "v", store.PutOptions{TTL: time.Second})
	clock.Advance(time.Second)

	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatalf("done not closed after close")
	}
	if _, err := s.Put("k", nil, store.PutOptions{}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("put: got %v, want %v", err, store.ErrClosed)
	}
	if _, err := s.Delete("k", store.Condition{}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("delete: got %v, want %v", err, store.ErrClosed)
	}
	if err := s.Apply(store.Change{Op: store.OpDelete, Revision: 10, Key: "k"}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("apply: got %v, want %v", err, store.ErrClosed)
	}
	if e, ok := s.Get("k"); !ok || !bytes.Equal(e.Value, []byte("v")) {
		t.Errorf("get after close: got %+v, %v", e, ok)
	}
	if _, ok := s.Get("x"); ok {
		t.Errorf("get after close returned an expired key")
	}
	if page, err := s.Scan(store.ScanOptions{}); err != nil || len(page.Entries) != 1 {
		t.Errorf("scan after close: got %+v, %v", page, err)
	}
	if got := s.ExpireCycle(); got != 0 {
		t.Errorf("expiry cycle after close removed %d keys", got)
	}
	if len(changes) != 2 || s.Revision() != 2 {
		t.Errorf("closed store reported changes: %+v, revision %d", changes, s.Revision())
	}
	s.Start() // must not start a loop that nobody stops
}

func TestWithShards(t *testing.T) {
	t.Parallel()
	// Whatever the shard count, every key must be stored and found.
	for i, n := range []int{-1, 0, 1, 3, 4, 100, 1 << 20} {
		s := newStore(t, store.WithShards(n))
		for _, k := range []string{"", "a", "b", "longer key"} {
			mustPut(t, s, k, k, store.PutOptions{})
			if e, ok := s.Get(k); !ok || string(e.Value) != k {
				t.Errorf("#%d: got %+v, %v, want %q", i, e, ok, k)
			}
		}
		if got := s.Len(); got != 4 {
			t.Errorf("#%d: got %v, want %v", i, got, 4)
		}
	}
}

func TestRangeAndAdvanceRevision(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := store.New(store.WithClock(clock.Now), store.WithShards(4))
	defer s.Close()
	for i, key := range []string{"a", "b", "c"} {
		opts := store.PutOptions{}
		if i == 2 {
			opts.TTL = time.Second
		}
		if _, err := s.Put(key, []byte(key), opts); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(time.Second) // c has expired but is not removed yet
	got := map[string]int64{}
	s.Range(func(e store.Entry) bool {
		got[e.Key] = e.ModRevision
		return true
	})
	if len(got) != 2 || got["a"] != 1 || got["b"] != 2 {
		t.Errorf("Range: got %v, want a@1 and b@2 only", got)
	}
	calls := 0
	s.Range(func(store.Entry) bool { calls++; return false })
	if calls != 1 {
		t.Errorf("Range went on after fn returned false: %d calls", calls)
	}

	s.AdvanceRevision(100)
	s.AdvanceRevision(50) // never backwards
	res, err := s.Put("d", nil, store.PutOptions{})
	if err != nil || res.Revision != 101 {
		t.Errorf("put after AdvanceRevision(100): got revision %d, %v; want 101", res.Revision, err)
	}
}
