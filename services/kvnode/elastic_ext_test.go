package kvnode_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fluxkv/fluxkv/client"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/services/gateway"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// writeLoad keeps writing through the SDK from several goroutines, each to
// its own keys, and remembers every key's last acknowledged value.
type writeLoad struct {
	mu     sync.Mutex
	slow   []time.Duration // the latencies of writes over 10 ms
	acked  map[string]string
	failed []error
	writes atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
}

// putter is what a writer writes through: the SDK, or a gateway.
type putter func(ctx context.Context, key, value string) error

func startWriteLoad(c *client.Client, keys []string, writers int, extra ...putter) *writeLoad {
	w := &writeLoad{acked: map[string]string{}, stop: make(chan struct{})}
	for g, put := range extra {
		w.wg.Go(func() {
			w.loop(false, func(ctx context.Context, seq int) ([]string, string, error) {
				key := fmt.Sprintf("new-x%d-%06d", g, seq)
				return []string{key}, key, put(ctx, key, key)
			})
		})
	}
	for g := range writers {
		w.wg.Go(func() {
			w.loop(true, func(ctx context.Context, seq int) ([]string, string, error) {
				// Every other write creates a key of its own, so a write lost
				// anywhere is missing at the end rather than overwritten; the
				// others overwrite the preloaded keys (each writer owns every
				// writers-th one, so no two race on a key).
				key := fmt.Sprintf("new-w%d-%06d", g, seq)
				if seq%2 == 1 {
					key = keys[(seq/2*writers+g)%len(keys)]
				}
				value := fmt.Sprintf("w%d-%d", g, seq)
				if g != 0 || seq%2 == 1 {
					_, err := c.Put(ctx, &kvv1.PutRequest{Key: key, Value: []byte(value)})
					return []string{key}, value, err
				}
				// The first writer's new keys go in Batches, with a second
				// key each, so per-operation refusals are retried too.
				results, err := c.Batch(ctx, []*kvv1.Operation{
					{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: key, Value: []byte(value)}}},
					{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: key + "-b", Value: []byte(value)}}},
				})
				for _, r := range results {
					if err == nil && r.GetError() != nil {
						err = fmt.Errorf("%s: %s", r.GetError().GetCode(), r.GetError().GetMessage())
					}
				}
				return []string{key, key + "-b"}, value, err
			})
		})
	}
	return w
}

// loop runs one writer until stop: write makes its seq-th write and says
// which keys it wrote, with what value. timed records the slow ones.
func (w *writeLoad) loop(timed bool, write func(ctx context.Context, seq int) (keys []string, value string, err error)) {
	for seq := 0; ; seq++ {
		select {
		case <-w.stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		began := time.Now()
		keys, value, err := write(ctx, seq)
		cancel()
		w.mu.Lock()
		if took := time.Since(began); timed && took > 10*time.Millisecond {
			w.slow = append(w.slow, took)
		}
		if err != nil {
			w.failed = append(w.failed, fmt.Errorf("put %s: %w", keys[0], err))
		} else {
			for _, key := range keys {
				w.acked[key] = value
			}
		}
		w.mu.Unlock()
		w.writes.Add(1)
	}
}

func (w *writeLoad) finish() (map[string]string, []error) {
	close(w.stop)
	w.wg.Wait()
	return w.acked, w.failed
}

// waitForEpoch waits until the ring in etcd reaches epoch and returns it.
func waitForEpoch(t *testing.T, etcd *clientv3.Client, epoch int64) *discovery.RingRecord {
	t.Helper()
	var cur *discovery.RingRecord
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err error
		cur, err = discovery.ReadCurrent(context.Background(), etcd)
		if err == nil && cur != nil && cur.Epoch >= epoch {
			return cur
		}
		if time.Now().After(deadline) {
			next, _ := discovery.ReadNext(context.Background(), etcd)
			t.Fatalf("the ring did not reach epoch %d within a minute: current %+v, next %+v (err %v)", epoch, cur, next, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func etcdClient(t *testing.T, url string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestScaleOutAndInUnderLoad: with writes coming through the SDK and a
// gateway the whole time, a fourth node joins a cluster that holds data, then one of the
// original three is removed. No write fails (the SDK retries the MOVING
// and NOT_OWNER refusals), every acknowledged write reads back at the end
// (half the writes create keys, so a lost one cannot hide under a later one),
// about a quarter of the keys moved to the new node, and every node ends up
// holding exactly the keys it owns.
func TestScaleOutAndInUnderLoad(t *testing.T) {
	t.Parallel()
	etcdURL, nodes := startCluster(t, 3)
	etcd := etcdClient(t, etcdURL)
	ctx := context.Background()
	c, err := client.New(ctx, client.WithEtcd(etcdURL))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	keys := make([]string, 3000)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%05d", i)
		if _, err := c.Put(ctx, &kvv1.PutRequest{Key: keys[i], Value: []byte("initial")}); err != nil {
			t.Fatal(err)
		}
	}
	before := waitForEpoch(t, etcd, 3)
	// One writer goes through a gateway, which retries for its callers.
	gw, err := gateway.New(gateway.Config{
		ID: "gw", Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Etcd: []string{etcdURL}, Logger: discardLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gw.Shutdown(context.Background()) })
	if err := gw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	viaGateway := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL(), connect.WithGRPC())
	load := startWriteLoad(c, keys, 4, func(ctx context.Context, key, value string) error {
		_, err := viaGateway.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte(value)}))
		return err
	})
	time.Sleep(300 * time.Millisecond)

	// Scale out.
	joiner, err := kvnode.New(withTestDefaults(kvnode.Config{
		NodeID: "node-4", DataDir: t.TempDir(), AppendOnly: true, Etcd: []string{etcdURL}, LeaseTTL: 2 * time.Second, Join: true,
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = joiner.Shutdown(context.Background()) })
	if err := joiner.Start(ctx); err != nil {
		t.Fatalf("start node-4 with Join: %v", err)
	}
	grown := waitForEpoch(t, etcd, before.Epoch+1)
	if !slices.Equal(grown.Members, []string{"node-1", "node-2", "node-3", "node-4"}) {
		t.Fatalf("members after the join: %v", grown.Members)
	}
	writesAtJoin := load.writes.Load()
	time.Sleep(300 * time.Millisecond)

	// Scale in.
	if _, err := discovery.BeginRemove(ctx, etcd, "node-2"); err != nil {
		t.Fatal(err)
	}
	shrunk := waitForEpoch(t, etcd, grown.Epoch+1)
	if !slices.Equal(shrunk.Members, []string{"node-1", "node-3", "node-4"}) {
		t.Fatalf("members after the removal: %v", shrunk.Members)
	}
	time.Sleep(300 * time.Millisecond)
	acked, failed := load.finish()
	for _, err := range failed {
		t.Error(err)
	}
	slices.Sort(load.slow)
	t.Logf("%d writes acknowledged during the test (%d before the join finished); %d SDK writes took over 10 ms, the slowest %v",
		load.writes.Load(), writesAtJoin, len(load.slow), load.slow[max(len(load.slow)-5, 0):])

	// Every acknowledged write reads back.
	check := slices.Clone(keys)
	for key := range acked {
		if !slices.Contains(keys, key) {
			check = append(check, key)
		}
	}
	for _, key := range check {
		want, ok := acked[key]
		if !ok {
			want = "initial"
		}
		resp, err := c.Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		if got := string(resp.GetValue()); got != want {
			t.Errorf("%s = %q, want %q (its last acknowledged write)", key, got, want)
		}
	}

	// About a quarter of the keys moved to node-4 on the add.
	r3, _ := ring.New(before.Members)
	r4, _ := ring.New(grown.Members)
	moved := 0
	for _, key := range keys {
		if r3.Owner(key) != r4.Owner(key) {
			if r4.Owner(key) != "node-4" {
				t.Fatalf("%s moved from %s to %s, not to the new node", key, r3.Owner(key), r4.Owner(key))
			}
			moved++
		}
	}
	frac := float64(moved) / float64(len(keys))
	t.Logf("%d of %d keys (%.1f%%) moved to node-4 on the add", moved, len(keys), 100*frac)
	if math.Abs(frac-0.25) > 0.08 {
		t.Errorf("%.1f%% of the keys moved on the add, want about 25%%", 100*frac)
	}

	// Each node holds exactly the keys it owns: the moved ones were dropped
	// where they came from, and node-2 holds none. The keys written are the
	// test's and startCluster's probes.
	written := slices.Clone(check)
	for _, m := range r3.Members() {
		written = append(written, keyOwnedBy(r3, m, "probe"))
	}
	final, _ := ring.New(shrunk.Members)
	all := append(slices.Clone(nodes), joiner)
	want := func(id string) int64 {
		n := int64(0)
		for _, key := range written {
			if final.Owner(key) == id {
				n++
			}
		}
		return n
	}
	waitUntil(t, "every node to hold just its own keys", func() bool {
		for _, n := range all {
			if n.Stats().GetKeyCount() != want(n.Stats().GetNodeId()) {
				return false
			}
		}
		return true
	})
	for _, n := range all {
		st := n.Stats()
		if hs := st.GetHandoffs(); len(hs) != 0 {
			t.Errorf("%s still reports handoffs after the change: %v", st.GetNodeId(), hs)
		}
		if st.GetEpoch() != shrunk.Epoch {
			t.Errorf("%s routes by epoch %d, want %d", st.GetNodeId(), st.GetEpoch(), shrunk.Epoch)
		}
	}
}

// TestClusterWatchEndsWhenMembersChange: a watch of the whole cluster reads
// one part per member, so when a node joins it ends with UNAVAILABLE, and
// resuming it from its last token covers the new member too.
func TestClusterWatchEndsWhenMembersChange(t *testing.T) {
	t.Parallel()
	etcdURL, nodes := startCluster(t, 3)
	etcd := etcdClient(t, etcdURL)
	api := kvv1connect.NewKVServiceClient(h2cClient(t), nodes[0].APIURL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := waitForEpoch(t, etcd, 3)
	stream, err := api.Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: ""}}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatalf("no first response: %v", stream.Err())
	}
	token := stream.Msg().GetResumeToken()
	joiner, err := kvnode.New(withTestDefaults(kvnode.Config{
		NodeID: "node-4", DataDir: t.TempDir(), Etcd: []string{etcdURL}, LeaseTTL: 2 * time.Second, Join: true,
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = joiner.Shutdown(context.Background()) })
	if err := joiner.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitForEpoch(t, etcd, before.Epoch+1)
	for stream.Receive() {
		token = stream.Msg().GetResumeToken()
	}
	if err := stream.Err(); connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "members changed") {
		t.Fatalf("the watch ended with %v, want unavailable saying the members changed", err)
	}
	// Resumed, it follows node-4 as well: a key it owns now shows.
	r4, _ := ring.New([]string{"node-1", "node-2", "node-3", "node-4"})
	key := keyOwnedBy(r4, "node-4", "after")
	resumed, err := api.Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: ""}, ResumeToken: token}))
	if err != nil {
		t.Fatal(err)
	}
	defer resumed.Close()
	if _, err := api.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
	for resumed.Receive() {
		for _, ev := range resumed.Msg().GetEvents() {
			if ev.GetKey() == key {
				if ev.GetNodeId() != "node-4" || ev.GetEpoch() != before.Epoch+1 {
					t.Errorf("the change of %s came from %s at epoch %d, want node-4 at %d", key, ev.GetNodeId(), ev.GetEpoch(), before.Epoch+1)
				}
				return
			}
		}
	}
	t.Fatalf("the resumed watch ended before the change of %s: %v", key, resumed.Err())
}
