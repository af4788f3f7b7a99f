package cdc_test

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/internal/amqptest"
	"github.com/fluxkv/fluxkv/platform/cdc"
)

// appendMarked adds n events to s as its Append does, marking those for
// which internal(rev) holds Internal (in the event and in its record, as a
// node's log does), and returns the last revision. The events are marked
// before any reader can see them.
func appendMarked(s *memSource, n int, internal func(rev int64) bool) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		rev := int64(len(s.events)) + 1
		ev := &cdcv1.ChangeEvent{
			NodeId:     s.node,
			Revision:   rev,
			Op:         ops[rev%3],
			Key:        "key/" + strconv.FormatInt(rev%97, 10),
			CommitTime: timestamppb.Now(),
			Internal:   internal(rev),
		}
		if ev.Op == cdcv1.Op_OP_PUT {
			ev.Value = []byte(fmt.Sprintf("value %d", rev))
		}
		data, err := proto.Marshal(ev)
		if err != nil {
			panic(err)
		}
		s.events = append(s.events, cdc.Event{
			Revision: rev, Op: ev.Op, Key: ev.Key, Time: ev.CommitTime.AsTime(), Data: data, Internal: ev.Internal,
		})
	}
	close(s.grew)
	s.grew = make(chan struct{})
	return int64(len(s.events))
}

// published returns the revisions of s that are not internal, in order.
func published(s *memSource) []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int64
	for _, ev := range s.events {
		if !ev.Internal {
			out = append(out, ev.Revision)
		}
	}
	return out
}

// deliveredRevisions returns the revisions of the deliveries of node, in the
// order they first arrived, failing the test on a delivery whose id and
// headers disagree.
func deliveredRevisions(t *testing.T, got *amqptest.Collector, node string) []int64 {
	t.Helper()
	var revs []int64
	for _, d := range got.Unique(node) {
		rev, err := strconv.ParseInt(strings.TrimPrefix(d.MessageId, node+":"), 10, 64)
		if err != nil || d.Headers["revision"] != rev {
			t.Fatalf("message %q: revision header %#v", d.MessageId, d.Headers["revision"])
		}
		revs = append(revs, rev)
	}
	return revs
}

// TestInternalEventsAreNotPublished: the relay publishes every event of the
// log but the internal ones (keys moving between nodes), in revision
// order, and its checkpoint moves past the internal ones with the events
// around them: to the last revision even when that one is internal, with
// an internal event first, in runs longer than the window, and alone when
// nothing is in flight.
func TestInternalEventsAreNotPublished(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	exchange, queue := amqptest.Exchange(t, broker), amqptest.Queue(t, broker)
	const node = "node-i"
	src := newMemSource(node)
	// Revision 1 is internal, then some in between, a run of 8 (two
	// windows' worth), and the last, 60.
	mixed := func(rev int64) bool {
		return rev == 1 || rev%5 == 0 || rev%7 == 0 || (rev >= 20 && rev <= 27)
	}
	appendMarked(src, 30, mixed)
	var (
		mu          sync.Mutex
		checkpoints []int64
	)
	h := newRelay(t, cdc.Config{
		URL: broker, NodeID: node, Exchange: exchange, Queue: queue, Window: 4,
		CheckpointDir: t.TempDir(), CheckpointInterval: 20 * time.Millisecond,
		OnCheckpoint: func(rev int64) {
			mu.Lock()
			defer mu.Unlock()
			checkpoints = append(checkpoints, rev)
		},
	}, src)
	h.relay.Start()
	eventually(t, "connected", func() bool { return h.metric(t, "flux_cdc_connected") == 1 })
	got := amqptest.Consume(t, broker, queue)
	for range 6 {
		appendMarked(src, 5, mixed)
	}
	last := src.Durable()
	if last != 60 || !src.Event(last).Internal {
		t.Fatalf("the log ends at %d (internal %v), want at 60 with an internal event", last, src.Event(last).Internal)
	}
	eventually(t, "checkpoint at the last revision, an internal one", func() bool { return h.relay.Checkpoint() == last })

	// Internal events alone, while nothing is in flight: confirmed at once.
	last = appendMarked(src, 5, func(int64) bool { return true })
	eventually(t, "checkpoint past internal events alone", func() bool { return h.relay.Checkpoint() == last })
	eventually(t, "no lag in revisions", func() bool { return h.metric(t, "flux_cdc_lag_revisions") == 0 })

	// One more published event among internal ones, then a published one
	// that every event published before it reaches the queue ahead of, then
	// an internal one last.
	appendMarked(src, 1, func(int64) bool { return false })
	appendMarked(src, 2, func(int64) bool { return true })
	sentinel := appendMarked(src, 1, func(int64) bool { return false })
	last = appendMarked(src, 1, func(int64) bool { return true })
	eventually(t, "checkpoint at the last revision, an internal one", func() bool { return h.relay.Checkpoint() == last })
	want := published(src)
	if want[len(want)-1] != sentinel {
		t.Fatalf("published revisions %v do not end with the sentinel %d", want, sentinel)
	}
	eventually(t, "the sentinel delivered", func() bool { return slices.Contains(deliveredRevisions(t, got, node), sentinel) })

	if revs := deliveredRevisions(t, got, node); !slices.Equal(revs, want) {
		t.Errorf("delivered revisions %v, want the %d that are not internal, in order: %v", revs, len(want), want)
	}
	for _, d := range got.All() {
		rev, _ := d.Headers["revision"].(int64)
		if rev < 1 || rev > last {
			t.Errorf("message %s: revision header %#v", d.MessageId, d.Headers["revision"])
			continue
		}
		ev := src.Event(rev)
		if ev.Internal {
			t.Errorf("internal revision %d was published (message %s)", rev, d.MessageId)
		}
		if !bytes.Equal(d.Body, ev.Data) || d.RoutingKey != cdc.OpName(ev.Op)+"."+node {
			t.Errorf("message %s: body or routing key %q do not match revision %d", d.MessageId, d.RoutingKey, rev)
		}
	}
	// Over one connection, nothing is published twice: exactly the events
	// that are not internal were published and confirmed.
	if conns := h.metric(t, "flux_cdc_connections_total"); conns == 1 {
		for _, name := range []string{"flux_cdc_published_total", "flux_cdc_confirmed_total"} {
			if n := h.metric(t, name); n != float64(len(want)) {
				t.Errorf("%s = %v, want %d (the events that are not internal)", name, n, len(want))
			}
		}
	} else {
		t.Logf("%v connections: published and confirmed counts not checked", conns)
	}
	for name, value := range map[string]float64{"flux_cdc_nacked_total": 0, "flux_cdc_returned_total": 0, "flux_cdc_checkpoint_revision": float64(last)} {
		if v := h.metric(t, name); v != value {
			t.Errorf("%s = %v, want %v", name, v, value)
		}
	}
	eventually(t, "no lag in revisions", func() bool { return h.metric(t, "flux_cdc_lag_revisions") == 0 })
	// The checkpoint only moves forward: an internal event never takes it
	// past a published one still in flight, which a later confirm would
	// then take it back to.
	mu.Lock()
	defer mu.Unlock()
	if len(checkpoints) == 0 || checkpoints[len(checkpoints)-1] != last {
		t.Errorf("OnCheckpoint saw %v, want revisions ending at %d", checkpoints, last)
	}
	for i := 1; i < len(checkpoints); i++ {
		if checkpoints[i] <= checkpoints[i-1] {
			t.Errorf("OnCheckpoint saw %v: %d after %d", checkpoints, checkpoints[i], checkpoints[i-1])
			break
		}
	}
}

// TestLagClearsAfterInternalEvents: once the relay has confirmed its way
// past a batch of internal events that arrived while nothing was in
// flight, it holds no event, so its lag in seconds is 0 again, as it is
// after published events are confirmed.
func TestLagClearsAfterInternalEvents(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	exchange, queue := amqptest.Exchange(t, broker), amqptest.Queue(t, broker)
	const node = "node-j"
	src := newMemSource(node)
	h := newRelay(t, cdc.Config{
		URL: broker, NodeID: node, Exchange: exchange, Queue: queue,
		CheckpointDir: t.TempDir(), CheckpointInterval: 20 * time.Millisecond,
	}, src)
	h.relay.Start()
	eventually(t, "connected", func() bool { return h.metric(t, "flux_cdc_connected") == 1 })
	last := src.Append(10)
	eventually(t, "checkpoint at the last revision", func() bool { return h.relay.Checkpoint() == last })
	eventually(t, "no lag in seconds after published events", func() bool { return h.metric(t, "flux_cdc_lag_seconds") == 0 })

	last = appendMarked(src, 5, func(int64) bool { return true })
	eventually(t, "checkpoint past internal events alone", func() bool { return h.relay.Checkpoint() == last })
	eventually(t, "no lag in revisions", func() bool { return h.metric(t, "flux_cdc_lag_revisions") == 0 })
	eventually(t, "no lag in seconds after internal events alone", func() bool { return h.metric(t, "flux_cdc_lag_seconds") == 0 })
}
