package kvnode_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/platform/store"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// growRequest is a copy from node-a to node-c when node-c joins node-a and
// node-b.
func growRequest() *clusterv1.CopyRequest {
	return &clusterv1.CopyRequest{
		FromMembers: []string{"node-a", "node-b"},
		ToMembers:   []string{"node-a", "node-b", "node-c"},
		Target:      "node-c",
	}
}

// movesToC reports whether key moves from node-a to node-c in growRequest,
// computed from the rings themselves.
func movesToC(t *testing.T) func(string) bool {
	t.Helper()
	from, err := ring.New([]string{"node-a", "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	to, err := ring.New([]string{"node-a", "node-b", "node-c"})
	if err != nil {
		t.Fatal(err)
	}
	return func(key string) bool { return from.Owner(key) == "node-a" && to.Owner(key) == "node-c" }
}

// copying is a Copy stream being applied to a store.
type copying struct {
	applier *kvnode.Applier
	cancel  context.CancelFunc
	done    chan struct{}
	err     error // set when done is closed
}

// startCopy opens a Copy stream on url and applies it to st on a goroutine
// until stop.
func startCopy(t *testing.T, url string, req *clusterv1.CopyRequest, st *store.Store, now func() time.Time) *copying {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	client := clusterv1connect.NewHandoffServiceClient(h2cClient(t), url, connect.WithGRPC())
	stream, err := client.Copy(ctx, connect.NewRequest(req))
	if err != nil {
		cancel()
		t.Fatalf("copy: %v", err)
	}
	c := &copying{applier: kvnode.NewApplier(st, now), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer stream.Close()
		_, c.err = c.applier.Run(stream)
	}()
	t.Cleanup(c.stop)
	return c
}

// stop cancels the stream and waits for the applier to return.
func (c *copying) stop() {
	c.cancel()
	<-c.done
}

// waitFor waits until the applier has applied the source's changes up to
// rev, or fails the test if the copy ends first.
func (c *copying) waitFor(t *testing.T, rev int64) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("the copy to reach revision %d", rev), func() bool {
		select {
		case <-c.done:
			t.Fatalf("copy ended at revision %d: %v", c.applier.Revision(), c.err)
		default:
		}
		return c.applier.Revision() >= rev
	})
}

// copied is a key as a test compares it: value and absolute expiry.
type copied struct {
	value  string
	expire time.Time
}

func storeContents(st *store.Store) map[string]copied {
	got := map[string]copied{}
	st.Range(func(e store.Entry) bool {
		got[e.Key] = copied{string(e.Value), e.ExpireTime}
		return true
	})
	return got
}

// scanMoving reads the source's live keys that move, through its API.
func scanMoving(t *testing.T, client kvv1connect.KVServiceClient, moves func(string) bool) map[string]copied {
	t.Helper()
	want := map[string]copied{}
	cursor := ""
	for {
		resp, err := client.Scan(context.Background(), connect.NewRequest(&kvv1.ScanRequest{Cursor: cursor, Limit: 1000}))
		if err != nil {
			t.Fatalf("scan: %v", err)
		}
		for _, kv := range resp.Msg.GetItems() {
			if !moves(kv.GetKey()) {
				continue
			}
			var expire time.Time
			if kv.GetExpireTime() != nil {
				expire = kv.GetExpireTime().AsTime()
			}
			want[kv.GetKey()] = copied{string(kv.GetValue()), expire}
		}
		if cursor = resp.Msg.GetNextCursor(); cursor == "" {
			return want
		}
	}
}

func diffContents(t *testing.T, got, want map[string]copied) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("key %q: missing on the target, want %v", k, want[k])
		case g.value != want[k].value || !g.expire.Equal(want[k].expire):
			t.Errorf("key %q: got %v, want %v", k, g, want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			t.Errorf("key %q: on the target, want it absent", k)
		}
	}
}

// TestCopySnapshot: for a 2 -> 3 member change, the target receives
// exactly the keys that move from the source to it, with their values and
// their absolute expiry times, and not the source's keys that stay or go
// elsewhere.
func TestCopySnapshot(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	node := startNode(t, kvnode.Config{NodeID: "node-a", Clock: clk.Now})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	moves := movesToC(t)
	want := map[string]copied{}
	var last int64
	for i := range 300 {
		key, value := fmt.Sprintf("k/%d", i), fmt.Sprintf("v%d", i)
		req := &kvv1.PutRequest{Key: key, Value: []byte(value)}
		var expire time.Time
		if i%3 == 0 {
			req.Ttl = durationpb.New(time.Hour)
			expire = clk.Now().Add(time.Hour)
		}
		last = put(t, client, req).GetRevision()
		if moves(key) {
			want[key] = copied{value, expire}
		}
	}
	if len(want) == 0 || len(want) == 300 {
		t.Fatalf("%d of 300 keys move: the test needs some that move and some that stay", len(want))
	}

	target := store.New(store.WithClock(clk.Now))
	defer target.Close()
	c := startCopy(t, node.APIURL(), growRequest(), target, clk.Now)
	c.waitFor(t, last)
	c.stop()
	wantCode(t, c.err, connect.CodeCanceled)
	diffContents(t, storeContents(target), want)
}

// TestCopyUnderWrites: a copy that starts while clients put, delete and
// let keys expire, moving or not, leaves the target holding exactly the
// source's moving keys once the writes stop and the target has caught up.
func TestCopyUnderWrites(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	node := startNode(t, kvnode.Config{NodeID: "node-a", Clock: clk.Now, AppendOnly: true})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	const keys = 200
	for i := range keys {
		put(t, client, &kvv1.PutRequest{Key: fmt.Sprintf("k/%d", i), Value: []byte("initial")})
	}

	var ops atomic.Int64
	stopc := make(chan struct{})
	var writers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range 400 {
				key := fmt.Sprintf("k/%d", rng.IntN(keys))
				var err error
				switch rng.IntN(4) {
				case 0:
					_, err = client.Delete(context.Background(), connect.NewRequest(&kvv1.DeleteRequest{Key: key}))
				case 1:
					ttl := time.Duration(1+rng.IntN(3)) * time.Second
					_, err = client.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{
						Key: key, Value: fmt.Appendf(nil, "w%d-%d", w, i), Ttl: durationpb.New(ttl)}))
				default:
					_, err = client.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{
						Key: key, Value: fmt.Appendf(nil, "w%d-%d", w, i)}))
				}
				if err != nil {
					t.Errorf("write %s: %v", key, err)
					return
				}
				ops.Add(1)
			}
		})
	}
	// Time moves while the writes go on, so keys with a TTL expire (found
	// by the node's expiry loop or by a write that touches them).
	ticking := make(chan struct{})
	go func() {
		defer close(ticking)
		for {
			select {
			case <-stopc:
				return
			case <-time.After(2 * time.Millisecond):
				clk.Advance(100 * time.Millisecond)
			}
		}
	}()

	// The copy starts once the writes are under way, so its walk races
	// with them.
	waitUntil(t, "writes under way", func() bool { return ops.Load() >= 200 })
	target := store.New(store.WithClock(clk.Now))
	defer target.Close()
	c := startCopy(t, node.APIURL(), growRequest(), target, clk.Now)
	writers.Wait()
	close(stopc)
	<-ticking
	if t.Failed() {
		return
	}

	stats, err := clusterv1connect.NewNodeServiceClient(h2cClient(t), node.APIURL()).Stats(context.Background(), connect.NewRequest(&clusterv1.StatsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	c.waitFor(t, stats.Msg.GetStats().GetRevision())
	// The clock stands still now, so both sides hide the same expired keys
	// whether or not they have removed them yet.
	want := scanMoving(t, client, movesToC(t))
	if len(want) == 0 {
		t.Fatal("no moving key is left: the test compares nothing")
	}
	diffContents(t, storeContents(target), want)
}

// TestCopyRequestErrors: malformed requests fail with INVALID_ARGUMENT, and
// a node asked to copy from a ring it is not in with FAILED_PRECONDITION.
func TestCopyRequestErrors(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{NodeID: "node-a"})
	client := clusterv1connect.NewHandoffServiceClient(h2cClient(t), node.APIURL())
	tests := []struct {
		edit func(*clusterv1.CopyRequest)
		want connect.Code
	}{
		{func(r *clusterv1.CopyRequest) { r.FromMembers = nil }, connect.CodeInvalidArgument},
		{func(r *clusterv1.CopyRequest) { r.ToMembers = nil }, connect.CodeInvalidArgument},
		{func(r *clusterv1.CopyRequest) { r.Target = "" }, connect.CodeInvalidArgument},
		{func(r *clusterv1.CopyRequest) { r.Target = "node-d" }, connect.CodeInvalidArgument}, // not in to_members
		{func(r *clusterv1.CopyRequest) { r.FromMembers = []string{"node-a", "node-a"} }, connect.CodeInvalidArgument},
		{func(r *clusterv1.CopyRequest) { r.ToMembers = append(r.ToMembers, "node-c") }, connect.CodeInvalidArgument},
		{func(r *clusterv1.CopyRequest) { r.ToMembers = append(r.ToMembers, "-bad") }, connect.CodeInvalidArgument},
		{func(r *clusterv1.CopyRequest) { r.VirtualNodes = 1 << 20 }, connect.CodeInvalidArgument},
		// The node asked is the target: a node does not copy to itself.
		{func(r *clusterv1.CopyRequest) { r.Target = "node-a"; r.ToMembers = []string{"node-a"} }, connect.CodeInvalidArgument},
		// The node asked owns nothing in the current ring.
		{func(r *clusterv1.CopyRequest) { r.FromMembers = []string{"node-b"} }, connect.CodeFailedPrecondition},
	}
	for i, tt := range tests {
		req := growRequest()
		tt.edit(req)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		stream, err := client.Copy(ctx, connect.NewRequest(req))
		if err == nil {
			for stream.Receive() {
				t.Errorf("#%d: got %v, want an error", i, stream.Msg())
			}
			err = stream.Err()
			_ = stream.Close()
		}
		cancel()
		if got := connect.CodeOf(err); got != tt.want {
			t.Errorf("#%d: got %v (%v), want %v", i, got, err, tt.want)
		}
	}
}
