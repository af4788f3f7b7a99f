package kvnode

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/platform/store"
)

// TestSweeperKeepsCopiesOfANewerView: a sweep started for an earlier ring
// change (a view without next) is still walking the store when a new change
// starts and the applier writes copies; the sweep must read the view for
// each key, or it deletes copies the applier believes applied.
func TestSweeperKeepsCopiesOfANewerView(t *testing.T) {
	t.Parallel()
	st := store.New()
	m := &mover{self: "b", store: st, metrics: newHandoffMetrics(prometheus.NewRegistry()), logger: slog.New(slog.NewTextHandler(io.Discard, nil)), stopc: make(chan struct{})}
	cur, _ := ring.New([]string{"a", "b"})
	next, _ := ring.New([]string{"b"}) // removing a: everything a owns moves to b
	c := &cluster{ringChanged: make(chan struct{}, 1), stopc: make(chan struct{})}
	c.view.Store(&view{ring: cur, epoch: 5})
	// Keys b held but no longer owns after the flip to epoch 5 (to drop).
	for i := range 400_000 {
		k := fmt.Sprintf("old/%d", i)
		if cur.Owner(k) == "a" {
			st.Put(k, []byte("x"), store.PutOptions{})
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); m.sweeper(c) }()
	c.ringChanged <- struct{}{} // the flip to epoch 5
	time.Sleep(2 * time.Millisecond)

	// remove-node a begins: follow stores the view with next, the mover's
	// applier writes the copies of a's keys.
	c.view.Store(&view{ring: cur, next: next, epoch: 5})
	select {
	case c.ringChanged <- struct{}{}:
	default:
	}
	var copied []string
	for i := 0; len(copied) < 2000; i++ {
		k := fmt.Sprintf("copy/%d", i)
		if cur.Owner(k) == "a" {
			st.Put(k, []byte("v"), store.PutOptions{})
			copied = append(copied, k)
		}
	}
	// Let both sweeps finish.
	for range 200 {
		time.Sleep(20 * time.Millisecond)
		if len(c.ringChanged) == 0 {
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(c.stopc)
	<-done
	lost := 0
	for _, k := range copied {
		if _, ok := st.Get(k); !ok {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("the sweep with the stale view deleted %d of %d copies the target owns in the next ring", lost, len(copied))
	}
}
