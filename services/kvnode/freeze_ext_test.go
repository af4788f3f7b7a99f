package kvnode_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestSourceRestartedWhileFrozenCannotFlip: a source keeps its freeze in
// memory, so after a restart it takes writes to the moving keys again,
// past the revision it promised; the ring must then not flip on the
// target's word (the test plays the target, as mover.moveOnce does: the
// source's incarnation, then Freeze, then MarkReady and Flip).
func TestSourceRestartedWhileFrozenCannotFlip(t *testing.T) {
	t.Parallel()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	cfg := withTestDefaults(kvnode.Config{NodeID: "node-1", DataDir: t.TempDir(), AppendOnly: true, Etcd: []string{etcd.ClientURL()}, LeaseTTL: 2 * time.Second})
	start := func() *kvnode.Node {
		n, err := kvnode.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := n.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return n
	}
	node := start()
	ctx := context.Background()
	kv := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	next, _ := ring.New([]string{"node-1", "node-9"})
	key := keyOwnedBy(next, "node-9", "moving")
	if _, err := kv.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("v1")})); err != nil {
		t.Fatal(err)
	}
	ec := etcdClient(t, etcd.ClientURL())
	if _, err := discovery.BeginAdd(ctx, ec, "node-9"); err != nil {
		t.Fatal(err)
	}
	change, id, err := discovery.ReadChange(ctx, ec)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := ec.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	instance := discovery.InstanceKey(kvv1connect.KVServiceName, "node-1")
	incarnation, err := discovery.Incarnation(ctx, ec, instance)
	if err != nil {
		t.Fatal(err)
	}
	handoff := clusterv1connect.NewHandoffServiceClient(h2cClient(t), node.APIURL(), connect.WithGRPC())
	if _, err := handoff.Freeze(ctx, connect.NewRequest(&clusterv1.FreezeRequest{
		FromMembers: []string{"node-1"}, ToMembers: change.Members, Target: "node-9", Epoch: change.Epoch, LeaseId: int64(lease.ID),
	})); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("v2")})); coord.Reason(err) != coord.ReasonMoving {
		t.Fatalf("a write to a frozen key: %v, want MOVING", err)
	}
	if _, err := kv.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key})); coord.Reason(err) != coord.ReasonMoving {
		t.Fatalf("a read of a frozen key: %v, want MOVING", err)
	}

	if err := node.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	node = start()
	t.Cleanup(func() { _ = node.Shutdown(context.Background()) })
	kv = kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	if _, err := kv.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("after the restart")})); err != nil {
		t.Fatalf("the restarted source refused a write: %v", err)
	}
	// node-9 drained through the freeze revision and never saw that write.
	ready := discovery.Ready{Sources: map[string]int64{instance: incarnation}}
	if err := discovery.MarkReady(ctx, ec, id, change.Epoch, "node-9", ready, lease.ID); err != nil {
		t.Fatal(err)
	}
	if flipped, err := discovery.Flip(ctx, ec, id); flipped || err != nil {
		t.Fatalf("flip after the source restarted: flipped %v, %v; want refused", flipped, err)
	}
	// With the source's new incarnation (a target that froze it again), it
	// flips.
	if incarnation, err = discovery.Incarnation(ctx, ec, instance); err != nil {
		t.Fatal(err)
	}
	ready.Sources[instance] = incarnation
	if err := discovery.MarkReady(ctx, ec, id, change.Epoch, "node-9", ready, lease.ID); err != nil {
		t.Fatal(err)
	}
	if flipped, err := discovery.Flip(ctx, ec, id); !flipped || err != nil {
		t.Fatalf("flip with the current incarnation: flipped %v, %v", flipped, err)
	}
}
