package kvnode_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/fluxkv/fluxkv/client"
	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// longWatchTimeout bounds the watches of TestWatchSkipsKeysMovingToANewNode,
// which stay open while a node joins: longer than watchTimeout.
const longWatchTimeout = 3 * time.Minute

// openLongWatch is openWatch for a request with headers of its own and a
// longer deadline.
func openLongWatch(t *testing.T, client kvv1connect.KVServiceClient, req *connect.Request[kvv1.WatchRequest]) *watching {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), longWatchTimeout)
	stream, err := client.Watch(ctx, req)
	if err != nil {
		cancel()
		t.Fatalf("watch: %v", err)
	}
	w := &watching{stream: stream, cancel: cancel}
	t.Cleanup(w.close)
	if !stream.Receive() {
		t.Fatalf("watch %v: no first response: %v", req.Msg, stream.Err())
	}
	if n := len(stream.Msg().GetEvents()); n != 0 || stream.Msg().GetResumeToken() == "" {
		t.Fatalf("first response: got %d events and token %q, want none and a token", n, stream.Msg().GetResumeToken())
	}
	w.token = stream.Msg().GetResumeToken()
	return w
}

// readUntilKeys reads w until an event of each of keys has arrived.
func readUntilKeys(t *testing.T, w *watching, keys ...string) {
	t.Helper()
	for {
		seen := map[string]bool{}
		for _, e := range w.events {
			seen[e.GetKey()] = true
		}
		if !slices.ContainsFunc(keys, func(k string) bool { return !seen[k] }) {
			return
		}
		w.read(t, len(w.events)+1)
	}
}

// movedWrite is a write the test made through the SDK, in order.
type movedWrite struct {
	op     cdcv1.Op
	key    string
	value  string
	joined bool // made after the ring flipped to include node-4
}

// TestWatchSkipsKeysMovingToANewNode: while a fourth node joins a cluster
// that holds data, the keys that move to it are copied there and then
// dropped where they were; both are internal records of the nodes' logs,
// which no watch shows. A watch of the whole keyspace sees each write made
// through the SDK once, as a change of the node that owned the key by the
// ring it routed by, stamped with that ring's epoch.
//
// A cluster-wide watch is made of one part per member of the ring as it
// was when the watch started (coordinateWatch), so one opened before the
// join never covers node-4. As WatchRequest.resume_token documents, such a
// watch goes on through a new one resumed from its last token, which
// streams node-4's changes from its first revision: the internal copies
// come first there, so the resumed watch is where they would show. Node-4
// is also watched directly: a key watch from revision 1 of a key that
// moved to it, and its own log alone (a forwarded prefix watch, as a peer
// coordinating a watch sends it).
func TestWatchSkipsKeysMovingToANewNode(t *testing.T) {
	t.Parallel()
	etcdURL, nodes := startCluster(t, 3)
	etcd := etcdClient(t, etcdURL)
	ctx := context.Background()
	before := waitForEpoch(t, etcd, 3)
	oldEpoch := before.Epoch
	for _, n := range nodes {
		waitUntil(t, fmt.Sprintf("%s to route by epoch %d", n.Stats().GetNodeId(), oldEpoch), func() bool { return n.RingEpoch() == oldEpoch })
	}
	r3, err := ring.New(before.Members)
	if err != nil {
		t.Fatal(err)
	}
	// The ring node-4's join leads to (checked once it flipped).
	r4, err := ring.New(append(slices.Clone(before.Members), "node-4"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(ctx, client.WithEtcd(etcdURL))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var writes []movedWrite // those made once the first watch was open
	recording := false
	joined := false
	seq := 0
	put := func(key string) {
		t.Helper()
		seq++
		value := fmt.Sprintf("%s#%d", key, seq)
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if _, err := c.Put(wctx, &kvv1.PutRequest{Key: key, Value: []byte(value)}); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		if recording {
			writes = append(writes, movedWrite{op: cdcv1.Op_OP_PUT, key: key, value: value, joined: joined})
		}
	}
	del := func(key string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		resp, err := c.Delete(wctx, &kvv1.DeleteRequest{Key: key})
		if err != nil || !resp.GetFound() {
			t.Fatalf("delete %s: %v, %v", key, resp, err)
		}
		writes = append(writes, movedWrite{op: cdcv1.Op_OP_DELETE, key: key, joined: joined})
	}
	live := map[string]bool{} // the keys the test holds, besides startCluster's probes
	for i := range 120 {
		key := fmt.Sprintf("iw/a/%03d", i)
		put(key)
		live[key] = true
	}

	// A watch of the whole keyspace, through node-1.
	api := func(n *kvnode.Node) kvv1connect.KVServiceClient {
		return kvv1connect.NewKVServiceClient(h2cClient(t), n.APIURL())
	}
	first := openLongWatch(t, api(nodes[0]), connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: ""}}))
	recording = true
	for i := range 60 {
		key := fmt.Sprintf("iw/b/%03d", i)
		put(key)
		put(key)
		live[key] = true
		if i%10 == 0 {
			del(key)
			delete(live, key)
		}
	}

	// Node-4 joins; keys move to it.
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
	// Nothing is written while node-4 joins: the copies catch up with
	// idle sources too.
	grown := waitForEpoch(t, etcd, oldEpoch+1)
	if !slices.Equal(grown.Members, []string{"node-1", "node-2", "node-3", "node-4"}) {
		t.Fatalf("members after the join: %v", grown.Members)
	}
	newEpoch := grown.Epoch
	all := append(slices.Clone(nodes), joiner)
	for _, n := range all {
		waitUntil(t, fmt.Sprintf("%s to route by epoch %d", n.Stats().GetNodeId(), newEpoch), func() bool { return n.RingEpoch() == newEpoch })
	}
	// Every node holds just its keys: node-4 its copies, and the others
	// have dropped the keys that moved, so those internal deletes are in
	// their logs before anything below is written.
	held := slices.Collect(maps.Keys(live))
	for _, m := range r3.Members() {
		held = append(held, keyOwnedBy(r3, m, "probe"))
	}
	owned := func(id string) int64 {
		n := int64(0)
		for _, key := range held {
			if r4.Owner(key) == id {
				n++
			}
		}
		return n
	}
	waitUntil(t, "every node to hold just its own keys", func() bool {
		for _, n := range all {
			if n.Stats().GetKeyCount() != owned(n.Stats().GetNodeId()) {
				return false
			}
		}
		return true
	})
	copied := owned("node-4") // node-4's first revisions are these copies
	var movedA []string
	for i := range 120 {
		if key := fmt.Sprintf("iw/a/%03d", i); r4.Owner(key) == "node-4" {
			movedA = append(movedA, key)
		}
	}
	if len(movedA) < 3 || copied < int64(len(movedA)) {
		t.Fatalf("%d of the keys written first moved to node-4, which holds %d keys; want some", len(movedA), copied)
	}

	// After the flip: writes to keys that moved and to keys that did not,
	// new keys, and deletes of keys that moved.
	joined = true
	for i := range 120 {
		if i%3 == 0 {
			put(fmt.Sprintf("iw/a/%03d", i))
		}
	}
	for _, key := range movedA[:3] {
		put(key)
		put(key)
	}
	for i := range 40 {
		put(fmt.Sprintf("iw/c/%03d", i))
	}
	deletedMoved := 0
	for i := range 60 {
		if key := fmt.Sprintf("iw/b/%03d", i); live[key] && r4.Owner(key) == "node-4" && deletedMoved < 2 {
			del(key)
			delete(live, key)
			deletedMoved++
		}
	}
	// A marker on every member the first watch covers: each is its node's
	// last change, so once all have arrived, so has everything before.
	var ends1 []string
	for _, m := range r3.Members() {
		key := keyOwnedBy(r4, m, "iw/end1")
		put(key)
		ends1 = append(ends1, key)
	}
	// The ring's members changed, so the first watch ends once its node
	// sees that (with what it read before); its client resumes it.
	for first.stream.Receive() {
		first.token = first.stream.Msg().GetResumeToken()
		first.events = append(first.events, first.stream.Msg().GetEvents()...)
	}
	if err := first.stream.Err(); connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "members changed") {
		t.Fatalf("the watch opened before the join ended with %v, want unavailable saying the members changed", err)
	}
	first.close()

	// The same watch, resumed through node-4: it covers node-4 now, from
	// its first revision.
	resumed := openLongWatch(t, api(joiner), connect.NewRequest(&kvv1.WatchRequest{
		Target: &kvv1.WatchRequest_Prefix{Prefix: ""}, ResumeToken: first.token,
	}))
	var ends2 []string
	for _, m := range r4.Members() {
		key := keyOwnedBy(r4, m, "iw/end2")
		put(key)
		ends2 = append(ends2, key)
	}
	readUntilKeys(t, resumed, ends2...)
	resumed.close()
	t.Logf("%d keys moved to node-4; the first watch got %d events, the resumed one %d", copied, len(first.events), len(resumed.events))

	// Together, the two watches got each write once. Each write is told
	// apart by its op, key and value (every put's value is its own).
	made := func(e *cdcv1.ChangeEvent) (movedWrite, bool) {
		for _, w := range writes {
			if w.op == e.GetOp() && w.key == e.GetKey() && w.value == string(e.GetValue()) {
				return w, true
			}
		}
		return movedWrite{}, false
	}
	check := func(t *testing.T, what string, e *cdcv1.ChangeEvent) {
		t.Helper()
		key := e.GetKey()
		if e.GetInternal() {
			t.Errorf("%s: %s %s at %s:%d is internal", what, e.GetOp(), key, e.GetNodeId(), e.GetRevision())
		}
		w, ok := made(e)
		if !ok {
			t.Errorf("%s: %s %s = %q at %s:%d is none of the writes made while watching", what, e.GetOp(), key, e.GetValue(), e.GetNodeId(), e.GetRevision())
			return
		}
		// The owner by the ring its node routed by, and that ring's epoch.
		r, epoch := r3, oldEpoch
		if w.joined {
			r, epoch = r4, newEpoch
		}
		if e.GetNodeId() != r.Owner(key) || e.GetEpoch() != epoch {
			t.Errorf("%s: %s %s from %s at epoch %d, want from %s at epoch %d", what, e.GetOp(), key, e.GetNodeId(), e.GetEpoch(), r.Owner(key), epoch)
		}
		if e.GetNodeId() == "node-4" && e.GetRevision() <= copied {
			t.Errorf("%s: %s %s at node-4:%d, one of the revisions of its %d copies", what, e.GetOp(), key, e.GetRevision(), copied)
		}
	}
	type id struct {
		node string
		rev  int64
	}
	seen := map[id]bool{}
	gotOps := map[string][]string{}
	for _, w := range []*watching{first, resumed} {
		last, epochs := map[string]int64{}, map[string]int64{}
		for _, e := range w.events {
			check(t, "cluster watch", e)
			k := id{e.GetNodeId(), e.GetRevision()}
			if seen[k] {
				t.Errorf("%s:%d (%s %s) delivered twice", k.node, k.rev, e.GetOp(), e.GetKey())
			}
			seen[k] = true
			if e.GetRevision() <= last[k.node] {
				t.Errorf("%s:%d (%s) after revision %d of the same node", k.node, k.rev, e.GetKey(), last[k.node])
			}
			if e.GetEpoch() < epochs[k.node] {
				t.Errorf("%s:%d (%s) at epoch %d after epoch %d of the same node", k.node, k.rev, e.GetKey(), e.GetEpoch(), epochs[k.node])
			}
			last[k.node], epochs[k.node] = e.GetRevision(), e.GetEpoch()
			gotOps[e.GetKey()] = append(gotOps[e.GetKey()], e.GetOp().String()+" "+string(e.GetValue()))
		}
	}
	wantOps := map[string][]string{}
	for _, w := range writes {
		wantOps[w.key] = append(wantOps[w.key], w.op.String()+" "+w.value)
	}
	for key, want := range wantOps {
		if got := gotOps[key]; !slices.Equal(got, want) {
			t.Errorf("%s: the watches got %q, want each write once: %q", key, got, want)
		}
	}
	for key, got := range gotOps {
		if _, ok := wantOps[key]; !ok {
			t.Errorf("%s: the watches got %q, but it was not written while they watched", key, got)
		}
	}

	// Node-4 directly: a key that moved to it, watched from its first
	// revision, starts with the writes made there, not with its copy.
	n4 := api(joiner)
	key := movedA[0]
	var wantKey []string
	for _, w := range writes {
		if w.key == key {
			wantKey = append(wantKey, w.op.String()+" "+w.value)
		}
	}
	kw := openLongWatch(t, n4, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Key{Key: key}, StartRevision: 1}))
	kw.read(t, len(wantKey))
	put(key)
	kw.read(t, len(wantKey)+1)
	var gotKey []string
	for _, e := range kw.events {
		check(t, "key watch on node-4", e)
		gotKey = append(gotKey, e.GetOp().String()+" "+string(e.GetValue()))
	}
	wantKey = append(wantKey, "OP_PUT "+writes[len(writes)-1].value)
	if !slices.Equal(gotKey, wantKey) {
		t.Errorf("watch of %s on node-4 from revision 1: got %q, want %q", key, gotKey, wantKey)
	}
	kw.close()

	// Node-4's own log, from revision 1: every write made there and no copy.
	req := connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: ""}, StartRevision: 1})
	req.Header().Set(coord.ForwardedHeader, "node-1")
	local := openLongWatch(t, n4, req)
	var wantLocal []string
	for _, w := range writes {
		if w.joined && r4.Owner(w.key) == "node-4" {
			wantLocal = append(wantLocal, w.op.String()+" "+w.key+" "+w.value)
		}
	}
	local.read(t, len(wantLocal))
	sentinel := keyOwnedBy(r4, "node-4", "iw/end3")
	put(sentinel)
	local.read(t, len(wantLocal)+1)
	wantLocal = append(wantLocal, "OP_PUT "+sentinel+" "+writes[len(writes)-1].value)
	var gotLocal []string
	for _, e := range local.events {
		check(t, "node-4's own watch", e)
		gotLocal = append(gotLocal, e.GetOp().String()+" "+e.GetKey()+" "+string(e.GetValue()))
	}
	if !slices.Equal(gotLocal, wantLocal) {
		t.Errorf("node-4's own watch from revision 1: got %d events %q, want %d: %q", len(gotLocal), gotLocal, len(wantLocal), wantLocal)
	}
}
