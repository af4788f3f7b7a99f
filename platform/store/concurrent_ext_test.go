package store_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/platform/store"
)

// TestConcurrent mixes every operation from many goroutines while the
// expiry loop runs, then checks that the hook saw one gapless, ordered
// history and that replaying it rebuilds the same store.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	const workers, ops = 8, 2000
	clock := newFakeClock()
	var rec recorder
	s := store.New(store.WithClock(clock.Now), store.WithChangeHook(rec.hook), store.WithShards(8),
		store.WithExpiryInterval(time.Millisecond), store.WithExpirySample(4))
	s.Start()

	// puts[w] holds the revisions worker w's puts were given, by key.
	type putRecord struct {
		key string
		rev int64
	}
	puts := make([][]putRecord, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 99))
			for i := range ops {
				key := fmt.Sprintf("k%02d", r.IntN(64))
				switch n := r.IntN(100); {
				case n < 40:
					opts := store.PutOptions{}
					switch r.IntN(4) {
					case 0:
						opts.TTL = time.Duration(1+r.IntN(5)) * time.Millisecond
					case 1:
						opts.Condition = store.IfAbsent()
					case 2:
						if e, ok := s.Get(key); ok {
							opts.Condition = store.IfRevision(e.ModRevision)
						}
					}
					res, err := s.Put(key, []byte(fmt.Sprintf("%d/%d", w, i)), opts)
					if err == nil {
						puts[w] = append(puts[w], putRecord{key, res.Revision})
					} else if !errors.Is(err, store.ErrConditionFailed) {
						t.Errorf("put: %v", err)
					}
				case n < 55:
					if _, err := s.Delete(key, store.Condition{}); err != nil {
						t.Errorf("delete: %v", err)
					}
				case n < 85:
					s.Get(key)
				case n < 95:
					if _, err := s.Scan(store.ScanOptions{Prefix: "k1", Limit: 3}); err != nil {
						t.Errorf("scan: %v", err)
					}
				default:
					clock.Advance(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	changes := rec.changes
	for i, c := range changes {
		if c.Revision != int64(i+1) {
			t.Fatalf("#%d: got revision %d, want %d", i, c.Revision, i+1)
		}
	}
	if got := s.Revision(); got != int64(len(changes)) {
		t.Errorf("got revision %d, want %d", got, len(changes))
	}
	for w := range puts {
		for _, p := range puts[w] {
			if c := changes[p.rev-1]; c.Op != store.OpPut || c.Key != p.key {
				t.Errorf("worker %d: put of %q got revision %d, which the hook saw as %v %q", w, p.key, p.rev, c.Op, c.Key)
			}
		}
	}

	replica := newStore(t, store.WithClock(clock.Now))
	for _, c := range changes {
		if err := replica.Apply(c); err != nil {
			t.Fatalf("apply %+v: %v", c, err)
		}
	}
	want, err := s.Scan(store.ScanOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	got, err := replica.Scan(store.ScanOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got.Entries, want.Entries, sameEntry) {
		t.Errorf("replica: got %+v, want %+v", got.Entries, want.Entries)
	}
	if replica.Revision() != s.Revision() {
		t.Errorf("replica: got revision %d, want %d", replica.Revision(), s.Revision())
	}
	t.Logf("%d changes, %d live keys", len(changes), len(want.Entries))
}
