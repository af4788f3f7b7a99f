package kvnode_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// startCluster runs an embedded etcd and n clustered nodes in this process.
func startCluster(t *testing.T, n int) (string, []*kvnode.Node) {
	t.Helper()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	nodes := make([]*kvnode.Node, n)
	for i := range n {
		cfg := withTestDefaults(kvnode.Config{
			NodeID: fmt.Sprintf("node-%d", i+1), DataDir: t.TempDir(), AppendOnly: true,
			Etcd: []string{etcd.ClientURL()}, LeaseTTL: 2 * time.Second,
		})
		node, err := kvnode.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = node.Shutdown(context.Background()) })
		nodes[i] = node
	}
	// All at once, as a compose file or an orchestrator starts them: no
	// node may refuse to join because the others are not live yet.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errs[i] = node.Start(ctx)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// Every node must see every member before the ring is complete.
	r, _ := ring.New([]string{"node-1", "node-2", "node-3"}[:n])
	for _, node := range nodes {
		client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
		waitUntil(t, "the full ring", func() bool {
			// A key owned by each member round-trips through this node.
			for _, m := range r.Members() {
				key := keyOwnedBy(r, m, "probe")
				if _, err := client.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: key})); err != nil {
					return false
				}
			}
			return true
		})
	}
	return etcd.ClientURL(), nodes
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// keyOwnedBy finds a key with the given prefix that member owns.
func keyOwnedBy(r *ring.Ring, member, prefix string) string {
	for i := 0; ; i++ {
		if key := fmt.Sprintf("%s/%d", prefix, i); r.Owner(key) == member {
			return key
		}
	}
}

// TestAnyNodeAnswersAnyKey writes through one node and reads through
// another; Batch and Scan are coordinated across owners.
func TestAnyNodeAnswersAnyKey(t *testing.T) {
	t.Parallel()
	_, nodes := startCluster(t, 3)
	ctx := context.Background()
	clients := make([]kvv1connect.KVServiceClient, len(nodes))
	for i, node := range nodes {
		clients[i] = kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	}
	var keys []string
	for i := range 60 {
		key := fmt.Sprintf("user/%03d", i)
		keys = append(keys, key)
		if _, err := clients[i%3].Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte(key)})); err != nil {
			t.Fatal(err)
		}
	}
	for i, key := range keys {
		resp, err := clients[(i+1)%3].Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key}))
		if err != nil || string(resp.Msg.GetValue()) != key {
			t.Fatalf("get %s through another node: %v, %v", key, resp, err)
		}
	}

	// Scan from any node pages through every node's keys in order.
	var seen []string
	cursor := ""
	for {
		resp, err := clients[2].Scan(ctx, connect.NewRequest(&kvv1.ScanRequest{Prefix: "user/", Limit: 7, Cursor: cursor}))
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range resp.Msg.GetItems() {
			seen = append(seen, item.GetKey())
		}
		if cursor = resp.Msg.GetNextCursor(); cursor == "" {
			break
		}
	}
	if !slices.Equal(seen, keys) {
		t.Fatalf("cluster scan returned %d keys %v, want %d in order", len(seen), seen, len(keys))
	}

	// Batch from any node, in request order.
	var ops []*kvv1.Operation
	for _, key := range keys[:10] {
		ops = append(ops, &kvv1.Operation{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: key}}})
	}
	resp, err := clients[0].Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: ops}))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.Msg.GetResults() {
		if string(r.GetGet().GetValue()) != keys[i] {
			t.Errorf("batch #%d: got %v, want %s", i, r, keys[i])
		}
	}
}

// TestKeysOfADownNodeFailFast: once a node is gone, its keys answer
// Unavailable at once, naming it, while other keys keep working.
func TestKeysOfADownNodeFailFast(t *testing.T) {
	t.Parallel()
	_, nodes := startCluster(t, 3)
	ctx := context.Background()
	r, _ := ring.New([]string{"node-1", "node-2", "node-3"})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), nodes[0].APIURL())
	down, up := keyOwnedBy(r, "node-3", "k"), keyOwnedBy(r, "node-2", "k")
	if err := nodes[2].Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "node-3 to be seen as down", func() bool {
		_, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: down}))
		return connect.CodeOf(err) == connect.CodeUnavailable
	})
	start := time.Now()
	_, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: down}))
	var connectErr *connect.Error
	if !errors.As(err, &connectErr) || connectErr.Code() != connect.CodeUnavailable || !strings.Contains(connectErr.Message(), "node-3") || !strings.Contains(connectErr.Message(), "not live") {
		t.Fatalf("get of a down node's key: %v", err)
	}
	// Failing fast means answering from what the node knows, not after a
	// timeout (a dial or call timeout is a second or more).
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("a down node's key failed after %v, want a fast failure", took)
	}
	if _, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: up, Value: []byte("v")})); err != nil {
		t.Errorf("a live node's key failed too: %v", err)
	}
	// A batch mixing both fails only the down node's item.
	resp, err := client.Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: []*kvv1.Operation{
		{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: up}}},
		{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: down}}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Msg.GetResults(); string(got[0].GetGet().GetValue()) != "v" || got[1].GetError().GetCode() != "unavailable" {
		t.Errorf("batch across a down node: %v", got)
	}
	if _, err := client.Scan(ctx, connect.NewRequest(&kvv1.ScanRequest{})); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("scan with a node down: got %v, want unavailable", err)
	}
}

// TestNewMemberIsRefusedWhileTheClusterHoldsData: adding a member would
// move keys without their data, so it needs the operator's consent.
func TestNewMemberIsRefusedWhileTheClusterHoldsData(t *testing.T) {
	t.Parallel()
	etcdURL, nodes := startCluster(t, 2)
	client := kvv1connect.NewKVServiceClient(h2cClient(t), nodes[0].APIURL())
	if _, err := client.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: "data", Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
	cfg := withTestDefaults(kvnode.Config{NodeID: "node-9", DataDir: t.TempDir(), Etcd: []string{etcdURL}})
	late, err := kvnode.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = late.Start(context.Background())
	_ = late.Shutdown(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot add node node-9 to a cluster that holds data") {
		t.Fatalf("joining a cluster with data: got %v, want a refusal", err)
	}
	cfg.AcceptKeyMovement = true
	forced, err := kvnode.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer forced.Shutdown(context.Background())
	if err := forced.Start(context.Background()); err != nil {
		t.Fatalf("joining with --accept-key-movement: %v", err)
	}
}

// TestRoutingFollowsTheRingRecord: nodes route by /flux/ring/current, not
// by the member keys, and follow it as it changes.
func TestRoutingFollowsTheRingRecord(t *testing.T) {
	t.Parallel()
	etcdURL, nodes := startCluster(t, 2)
	for _, node := range nodes {
		// Two joins, one epoch each.
		waitUntil(t, "epoch 2 on every node", func() bool { return node.RingEpoch() == 2 })
	}
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	ctx := context.Background()
	// A member only the record names (no member key, not live) owns keys.
	wide, _ := ring.New([]string{"node-1", "node-2", "node-ghost"})
	ghostKey := keyOwnedBy(wide, "node-ghost", "g")
	if _, err := kv.Put(ctx, discovery.RingCurrentKey, `{"epoch": 9, "members": ["node-1", "node-2", "node-ghost"]}`); err != nil {
		t.Fatal(err)
	}
	for i, node := range nodes {
		client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
		waitUntil(t, fmt.Sprintf("node-%d to route by epoch 9", i+1), func() bool {
			_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: ghostKey, Value: []byte("v")}))
			return coord.Reason(err) == coord.ReasonOwnerNotLive && strings.Contains(err.Error(), "node-ghost")
		})
		if got := node.RingEpoch(); got != 9 {
			t.Errorf("node-%d: epoch %d, want 9", i+1, got)
		}
	}
	// Back to the members: the key is served again.
	if _, err := kv.Put(ctx, discovery.RingCurrentKey, `{"epoch": 10, "members": ["node-1", "node-2"]}`); err != nil {
		t.Fatal(err)
	}
	for i, node := range nodes {
		client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
		waitUntil(t, fmt.Sprintf("node-%d to route by epoch 10", i+1), func() bool {
			_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: ghostKey, Value: []byte("v")}))
			return err == nil
		})
		if got := node.RingEpoch(); got != 10 {
			t.Errorf("node-%d: epoch %d, want 10", i+1, got)
		}
	}
}

// TestNodeMigratesAClusterWithoutRingRecord: a cluster whose members
// predate ring records gets one, epoch 1 over those members, from the first
// node that starts.
func TestNodeMigratesAClusterWithoutRingRecord(t *testing.T) {
	t.Parallel()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.ClientURL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	ctx := context.Background()
	for _, id := range []string{"node-1", "node-old"} {
		if _, err := kv.Put(ctx, discovery.MemberKey(id), `{"id":"`+id+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	node, err := kvnode.New(withTestDefaults(kvnode.Config{NodeID: "node-1", DataDir: t.TempDir(), Etcd: []string{etcd.ClientURL()}}))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Shutdown(ctx)
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := kv.Get(ctx, discovery.RingCurrentKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"epoch":1,"members":["node-1","node-old"]}` {
		t.Fatalf("ring record after the first start: %v", resp.Kvs)
	}
	if got := node.RingEpoch(); got != 1 {
		t.Errorf("node's epoch: %d, want 1", got)
	}
}

// TestEtcdOutage stops etcd for longer than the lease TTL: nodes keep
// serving meanwhile, register again when etcd returns, and the cluster
// routes normally afterwards.
func TestEtcdOutage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	etcd, err := etcdembed.Start(dir, "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := etcd.ClientURL()
	defer func() {
		if etcd != nil {
			etcd.Close()
		}
	}()
	var nodes []*kvnode.Node
	for i := range 2 {
		node, err := kvnode.New(withTestDefaults(kvnode.Config{
			NodeID: fmt.Sprintf("node-%d", i+1), DataDir: t.TempDir(), Etcd: []string{url}, LeaseTTL: time.Second,
		}))
		if err != nil {
			t.Fatal(err)
		}
		if err := node.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer node.Shutdown(context.Background())
		nodes = append(nodes, node)
	}
	r, _ := ring.New([]string{"node-1", "node-2"})
	clients := []kvv1connect.KVServiceClient{
		kvv1connect.NewKVServiceClient(h2cClient(t), nodes[0].APIURL()),
		kvv1connect.NewKVServiceClient(h2cClient(t), nodes[1].APIURL()),
	}
	ctx := context.Background()
	keys := []string{keyOwnedBy(r, "node-1", "o"), keyOwnedBy(r, "node-2", "o")}
	waitUntil(t, "both nodes routing", func() bool {
		for _, key := range keys {
			if _, err := clients[0].Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("before")})); err != nil {
				return false
			}
		}
		return true
	})

	leases := func() map[string]int64 {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, discovery.ServicesPrefix, clientv3.WithPrefix())
		if err != nil {
			return nil
		}
		out := map[string]int64{}
		for _, kv := range resp.Kvs {
			out[string(kv.Key)] = kv.Lease
		}
		return out
	}
	before := leases()
	if len(before) != 2 {
		t.Fatalf("registrations before the outage: %v", before)
	}

	etcd.Close()
	etcd = nil
	// Well past the lease: etcd may raise a 1 s lease to its minimum TTL,
	// and the client gives a lease up only when a periodic deadline check
	// finds the TTL passed since the last renewal. An outage barely longer
	// than the TTL (this test used 2.5 s, and failed in CI) can let the
	// client renew the old lease, which etcd restores on restart, so no new
	// registration happens.
	time.Sleep(5 * time.Second)
	for i, key := range keys {
		resp, err := clients[i].Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key}))
		if err != nil || string(resp.Msg.GetValue()) != "before" {
			t.Fatalf("node-%d serving its own key during the outage: %v, %v", i+1, resp, err)
		}
	}

	if etcd, err = etcdembed.Start(dir, url); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	// Both nodes lost their sessions, so they register again with new
	// leases; the old ones, which etcd restored, expire unrenewed.
	waitUntil(t, "both nodes to re-register with new leases", func() bool {
		after := leases()
		if len(after) != 2 {
			return false
		}
		for key, lease := range after {
			if lease == before[key] {
				return false
			}
		}
		return true
	})
	// Past the old leases' TTL the registrations are still there.
	time.Sleep(2 * time.Second)
	if after := leases(); len(after) != 2 {
		t.Fatalf("registrations after the old leases expired: %v", after)
	}
	waitUntil(t, "the cluster to route again after the outage", func() bool {
		for _, c := range clients {
			for _, key := range keys {
				if _, err := c.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("after")})); err != nil {
					return false
				}
			}
		}
		return true
	})
}

// TestPipelineThroughAnyNode pipelines operations on every owner's keys
// through one node.
func TestPipelineThroughAnyNode(t *testing.T) {
	t.Parallel()
	_, nodes := startCluster(t, 3)
	client := kvv1connect.NewKVServiceClient(h2cClient(t), nodes[0].APIURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream := client.Pipeline(ctx)
	const ops = 300
	go func() {
		for i := range ops {
			key := fmt.Sprintf("p/%d", i%100)
			if i < 200 {
				key = fmt.Sprintf("p/%d", i/2) // two puts in a row per key
			}
			op := &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: key, Value: []byte(fmt.Sprint(i))}}}
			if i >= 200 {
				op = &kvv1.Operation{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: key}}}
			}
			if err := stream.Send(&kvv1.PipelineRequest{Id: uint64(i), Operation: op}); err != nil {
				return
			}
		}
		_ = stream.CloseRequest()
	}()
	for i := range ops {
		resp, err := stream.Receive()
		if err != nil {
			t.Fatalf("receive #%d: %v", i, err)
		}
		if resp.GetId() != uint64(i) || resp.GetResult().GetError() != nil {
			t.Fatalf("#%d: got id %d result %v", i, resp.GetId(), resp.GetResult())
		}
		// Operations on one key keep their order: each get sees the second
		// of the two puts before it.
		if k := i - 200; k >= 0 && string(resp.GetResult().GetGet().GetValue()) != fmt.Sprint(2*k+1) {
			t.Fatalf("#%d: get of p/%d returned %q, want %d", i, k, resp.GetResult().GetGet().GetValue(), 2*k+1)
		}
	}
	_ = stream.CloseResponse()
}

// TestForwardedBatchIsCheckedForOwnership: a Batch that a peer forwards
// because its ring (stale, mid-change) places the keys here must not be
// applied to this node's store for keys this node's ring places elsewhere.
func TestForwardedBatchIsCheckedForOwnership(t *testing.T) {
	t.Parallel()
	_, nodes := startCluster(t, 2)
	ctx := context.Background()
	r, _ := ring.New([]string{"node-1", "node-2"})
	mine, theirs := keyOwnedBy(r, "node-1", "f"), keyOwnedBy(r, "node-2", "f")
	client := kvv1connect.NewKVServiceClient(h2cClient(t), nodes[0].APIURL())
	req := connect.NewRequest(&kvv1.BatchRequest{Operations: []*kvv1.Operation{
		{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: mine, Value: []byte("v")}}},
		{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: theirs, Value: []byte("v")}}},
	}})
	req.Header().Set(coord.ForwardedHeader, "node-2")
	resp, err := client.Batch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Msg.GetResults()
	if got[0].GetPut().GetRevision() == 0 {
		t.Errorf("#0: the owned key was not written: %v", got[0])
	}
	if e := got[1].GetError(); e.GetCode() != "unavailable" || !strings.Contains(e.GetMessage(), "belongs to node node-2") {
		t.Errorf("#1: got %v, want unavailable naming the owner", got[1])
	}
	// The refused key was written nowhere.
	get, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: theirs}))
	if err != nil || get.Msg.GetFound() {
		t.Errorf("the refused key: got %v, %v, want not found", get, err)
	}
}
