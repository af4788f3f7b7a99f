package kvnode_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/amqptest"
	"github.com/fluxkv/fluxkv/platform/cdc"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// cdcWait bounds each wait of the CDC tests for the broker: generous,
// because the race detector on a small CI machine slows the relay down.
const cdcWait = 60 * time.Second

// cdcNodeID is a node id of the test's own. Every node publishes to the one
// flux.cdc exchange, and a test's queue (bound with "#") also gets the
// events of nodes that other tests, or other packages' tests, run at the
// same time: the checks look at this id's events only.
func cdcNodeID(prefix string) string {
	return fmt.Sprintf("%s-%08x", prefix, rand.Uint32())
}

// lockedBuffer collects a node's logs while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startCDCNode is startNode keeping the node's logs, which say what the
// relay did, and printing them if the test fails.
func startCDCNode(t *testing.T, cfg kvnode.Config) *kvnode.Node {
	t.Helper()
	logs := &lockedBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node logs:\n%s", logs)
		}
	})
	cfg = withTestDefaults(cfg)
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	node, err := kvnode.New(cfg)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	if err := node.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := node.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return node
}

// adminMetric reads one sample from the node's /metrics: name is the metric
// name with its labels as the text format writes them, e.g.
// flux_aof_rewrites_total{result="ok"}.
func adminMetric(t *testing.T, node *kvnode.Node, name string) float64 {
	t.Helper()
	resp, err := http.Get(node.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		value, ok := strings.CutPrefix(scanner.Text(), name+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("metric %s: %v", name, err)
		}
		return v
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// inParallel runs fn(0) to fn(n-1) on a few goroutines and returns when all
// are done.
func inParallel(n int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				fn(i)
			}
		})
	}
	wg.Wait()
}

// wantEvent is what the log must hold at a revision a write was answered
// with.
type wantEvent struct {
	op     cdcv1.Op
	key    string
	value  string    // for puts
	commit time.Time // the fake clock when the write ran
	expire time.Time // for puts with a TTL
}

// TestCDCPublishesEveryMutation runs 10,000 mutations through a node with
// the log and CDC on: puts, deletes, and expiries that the store's active
// expiry or a read causes. A consumer of the node's queue must get every
// revision once after dedup by message id, in revision order, each with the
// properties and headers of the contract and a body that decodes to the
// change that revision made.
func TestCDCPublishesEveryMutation(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	queue := amqptest.Queue(t, broker)
	nodeID := cdcNodeID("cdc-all")
	clock := newFakeClock()
	node := startCDCNode(t, kvnode.Config{
		NodeID: nodeID, DataDir: t.TempDir(), AppendOnly: true, Clock: clock.Now,
		AMQPURL: broker, CDCQueue: queue,
	})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	got := amqptest.Consume(t, broker, queue)

	// Each round puts plain and TTL keys, deletes half the plain ones, and
	// moves the clock past the TTLs: 16 rounds of 500 writes and 125
	// expiries are 10,000 revisions.
	const (
		rounds, plain, withTTL, deletes = 16, 250, 125, 125
		total                           = rounds * (plain + withTTL + deletes + withTTL)
		ttl                             = time.Second
	)
	var (
		mu      sync.Mutex
		want    = map[int64]wantEvent{} // by the revision the write was answered with
		ttlKeys = map[string]wantEvent{}
	)
	record := func(rev int64, ev wantEvent) {
		mu.Lock()
		defer mu.Unlock()
		if _, dup := want[rev]; dup {
			t.Errorf("revision %d answered twice", rev)
		}
		want[rev] = ev
	}
	// A node that hangs fails the test rather than holding it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for r := range rounds {
		now := clock.Now()
		inParallel(plain+withTTL, func(i int) {
			req := &kvv1.PutRequest{Key: fmt.Sprintf("r%02d/plain/%03d", r, i), Value: fmt.Appendf(nil, "value %d.%d", r, i)}
			ev := wantEvent{op: cdcv1.Op_OP_PUT, key: req.Key, value: string(req.Value), commit: now}
			if i >= plain {
				req.Key = fmt.Sprintf("r%02d/ttl/%03d", r, i-plain)
				req.Ttl = durationpb.New(ttl)
				ev.key, ev.expire = req.Key, now.Add(ttl)
			}
			resp, err := client.Put(ctx, connect.NewRequest(req))
			if err != nil {
				t.Errorf("put %s: %v", req.Key, err)
				return
			}
			record(resp.Msg.GetRevision(), ev)
			if i >= plain {
				mu.Lock()
				ttlKeys[req.Key] = ev
				mu.Unlock()
			}
		})
		inParallel(deletes, func(i int) {
			key := fmt.Sprintf("r%02d/plain/%03d", r, i)
			resp, err := client.Delete(ctx, connect.NewRequest(&kvv1.DeleteRequest{Key: key}))
			if err != nil || !resp.Msg.GetFound() {
				t.Errorf("delete %s: %v, %v", key, resp, err)
				return
			}
			record(resp.Msg.GetRevision(), wantEvent{op: cdcv1.Op_OP_DELETE, key: key, commit: now})
		})
		clock.Advance(2 * ttl)
	}
	// The active expiry has removed most TTL keys by now; a read removes
	// the rest, so that every one has expired exactly once.
	inParallel(rounds*withTTL, func(i int) {
		key := fmt.Sprintf("r%02d/ttl/%03d", i/withTTL, i%withTTL)
		resp, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key}))
		if err != nil || resp.Msg.GetFound() {
			t.Errorf("get %s after its TTL: %v, %v", key, resp, err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	// Nothing beyond: no key expired twice, no write went unanswered.
	if rev := adminMetric(t, node, "flux_store_revision"); rev != total {
		t.Fatalf("node at revision %v, want %d", rev, total)
	}

	got.Wait(t, nodeID, total, cdcWait)
	got.CheckExactlyOnce(t, nodeID, total, true)
	expired := map[string]bool{}
	for _, d := range got.Unique(nodeID) {
		var ev cdcv1.ChangeEvent
		if err := proto.Unmarshal(d.Body, &ev); err != nil {
			t.Fatalf("message %s: body does not decode: %v", d.MessageId, err)
		}
		rev := ev.GetRevision()
		w, written := want[rev]
		if !written {
			// A revision no write was answered with is an expiry of a TTL
			// key, after the put that set the TTL.
			put, ok := ttlKeys[ev.GetKey()]
			if ev.GetOp() != cdcv1.Op_OP_EXPIRE || !ok || expired[ev.GetKey()] {
				t.Fatalf("revision %d: %v, want the first expiry of a key put with a TTL", rev, &ev)
			}
			expired[ev.GetKey()] = true
			w = wantEvent{op: cdcv1.Op_OP_EXPIRE, key: ev.GetKey(), commit: ev.GetCommitTime().AsTime()}
			if w.commit.Before(put.expire) {
				t.Errorf("revision %d: %s expired at %v, before its expire time %v", rev, w.key, w.commit, put.expire)
			}
		}
		op := cdc.OpName(w.op)
		checks := []struct {
			what      string
			got, want any
		}{
			{"event node id", ev.GetNodeId(), nodeID},
			{"event revision", rev, mustRevision(t, d)},
			{"event op", ev.GetOp(), w.op},
			{"event key", ev.GetKey(), w.key},
			{"event value", string(ev.GetValue()), w.value},
			{"exchange", d.Exchange, cdc.DefaultExchange},
			{"routing key", d.RoutingKey, op + "." + nodeID},
			{"message id", d.MessageId, nodeID + ":" + strconv.FormatInt(rev, 10)},
			{"content type", d.ContentType, "application/protobuf"},
			{"type", d.Type, "flux.cdc.v1.ChangeEvent"},
			{"delivery mode", d.DeliveryMode, amqp.Persistent},
			{"timestamp", d.Timestamp.Unix(), w.commit.Unix()},
			{"node_id header", d.Headers["node_id"], nodeID},
			{"op header", d.Headers["op"], op},
			{"key header", d.Headers["key"], w.key},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Fatalf("revision %d: %s %v, want %v", rev, c.what, c.got, c.want)
			}
		}
		if !ev.GetCommitTime().AsTime().Equal(w.commit) {
			t.Fatalf("revision %d: commit time %v, want %v", rev, ev.GetCommitTime().AsTime(), w.commit)
		}
		if set := ev.GetExpireTime() != nil; set != !w.expire.IsZero() || (set && !ev.GetExpireTime().AsTime().Equal(w.expire)) {
			t.Fatalf("revision %d: expire time %v, want %v (zero: unset)", rev, ev.GetExpireTime(), w.expire)
		}
	}
	if len(expired) != len(ttlKeys) {
		t.Errorf("%d expiries published, want %d", len(expired), len(ttlKeys))
	}
}

// mustRevision is the revision header of d, which CheckExactlyOnce has
// held to the message id.
func mustRevision(t *testing.T, d amqp.Delivery) int64 {
	t.Helper()
	rev, ok := d.Headers["revision"].(int64)
	if !ok {
		t.Fatalf("message %s: revision header %#v", d.MessageId, d.Headers["revision"])
	}
	return rev
}

// TestCDCBrokerOutageWithRewrite cuts the node off the broker for seconds
// while writers keep going, and rewrites the log during the outage, when it
// holds events the relay has not had confirmed: the rewrite must keep them
// for the relay, and once the broker is back every revision must arrive.
// No write may fail or wait for the broker meanwhile.
func TestCDCBrokerOutageWithRewrite(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	queue := amqptest.Queue(t, broker)
	proxy := amqptest.NewProxy(t, broker)
	nodeID := cdcNodeID("cdc-outage")
	dir := t.TempDir()
	node := startCDCNode(t, kvnode.Config{
		NodeID: nodeID, DataDir: dir, AppendOnly: true, AMQPURL: proxy.URL(), CDCQueue: queue,
	})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	got := amqptest.Consume(t, broker, queue)

	var (
		acked    atomic.Int64 // writes answered
		mu       sync.Mutex
		last     int64 // highest revision answered
		failures []error
		stopc    = make(chan struct{})
		wg       sync.WaitGroup
	)
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stopc:
					return
				default:
				}
				key := fmt.Sprintf("w%d/%d", w, i%500)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: fmt.Appendf(nil, "%d", i)}))
				cancel()
				mu.Lock()
				if err != nil {
					failures = append(failures, fmt.Errorf("put %s: %w", key, err))
				} else {
					last = max(last, resp.Msg.GetRevision())
				}
				mu.Unlock()
				if err == nil {
					acked.Add(1)
				}
			}
		})
	}
	var stopOnce sync.Once
	stopWriters := func() {
		stopOnce.Do(func() {
			close(stopc)
			wg.Wait()
		})
	}
	defer stopWriters()
	lastAcked := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		return last
	}

	waitUntil(t, "a checkpoint some way into the stream", func() bool { return adminMetric(t, node, "flux_cdc_checkpoint_revision") >= 200 })
	proxy.Cut()
	cutAt, ackedAtCut := time.Now(), acked.Load()
	waitUntil(t, "the relay to see the outage", func() bool { return adminMetric(t, node, "flux_cdc_connected") == 0 })
	time.Sleep(time.Second)

	// The rewrite replaces every segment written so far, and with them
	// events the broker has not confirmed.
	checkpoint, written := adminMetric(t, node, "flux_cdc_checkpoint_revision"), lastAcked()
	if int64(checkpoint) >= written {
		t.Fatalf("checkpoint %v at revision %d: nothing unconfirmed to keep through the rewrite", checkpoint, written)
	}
	resp, err := http.Post(node.AdminURL()+"/aof/rewrite", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("rewrite: %d %s", resp.StatusCode, body)
	}
	if bases, _ := filepath.Glob(filepath.Join(dir, "aof", "base-*.aof")); len(bases) != 1 {
		t.Fatalf("after the rewrite: base files %v, want one", bases)
	}
	time.Sleep(time.Until(cutAt.Add(3 * time.Second)))
	if adminMetric(t, node, "flux_cdc_connected") != 0 {
		t.Fatal("the relay reconnected through a cut proxy")
	}
	duringCut := acked.Load() - ackedAtCut
	if duringCut == 0 {
		t.Fatal("no write was answered while the broker was unreachable")
	}
	proxy.Restore()
	waitUntil(t, "the relay to reconnect", func() bool { return adminMetric(t, node, "flux_cdc_connected") == 1 })
	time.Sleep(300 * time.Millisecond)
	stopWriters()

	if len(failures) > 0 {
		t.Fatalf("%d writes failed, the first: %v", len(failures), failures[0])
	}
	end := lastAcked()
	if rev := adminMetric(t, node, "flux_store_revision"); rev != float64(end) {
		t.Fatalf("node at revision %v, want %d, the last write answered", rev, end)
	}
	t.Logf("%d writes, %d while cut off; %d unconfirmed at the rewrite", acked.Load(), duringCut, written-int64(checkpoint))
	got.Wait(t, nodeID, end, cdcWait)
	got.CheckExactlyOnce(t, nodeID, end, true)
	waitUntil(t, "the checkpoint at the last revision", func() bool {
		return adminMetric(t, node, "flux_cdc_checkpoint_revision") == float64(end)
	})
}
