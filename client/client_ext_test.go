package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/fluxkv/fluxkv/client"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// cluster starts an embedded etcd and three nodes; it returns etcd's URL
// and the nodes' URLs.
func cluster(t *testing.T) (string, []*kvnode.Node) {
	t.Helper()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	var nodes []*kvnode.Node
	for i := range 3 {
		node, err := kvnode.New(kvnode.Config{
			NodeID: fmt.Sprintf("node-%d", i+1), Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
			DataDir: t.TempDir(), Etcd: []string{etcd.ClientURL()}, LeaseTTL: 2 * time.Second,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := node.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = node.Shutdown(context.Background()) })
		nodes = append(nodes, node)
	}
	return etcd.ClientURL(), nodes
}

func TestClientRoutesThroughEtcd(t *testing.T) {
	t.Parallel()
	etcdURL, nodes := cluster(t)
	ctx := context.Background()
	c, err := client.New(ctx, client.WithEtcd(etcdURL))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The client may have loaded the membership before every node joined.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Put(ctx, &kvv1.PutRequest{Key: "probe"}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var ops []*kvv1.Operation
	for i := range 100 {
		key := fmt.Sprintf("k%03d", i)
		if _, err := c.Put(ctx, &kvv1.PutRequest{Key: key, Value: []byte(key)}); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		ops = append(ops, &kvv1.Operation{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: key}}})
	}
	results, err := c.Batch(ctx, ops)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if want := fmt.Sprintf("k%03d", i); string(r.GetGet().GetValue()) != want {
			t.Fatalf("batch #%d: got %v, want %s", i, r, want)
		}
	}
	page, err := c.Scan(ctx, &kvv1.ScanRequest{Prefix: "k", Limit: 1000})
	if err != nil || len(page.GetItems()) != 100 {
		t.Fatalf("scan: %d items, %v", len(page.GetItems()), err)
	}

	// A static client reaches the same data through any node.
	static, err := client.New(ctx, client.WithEndpoints("http://127.0.0.1:1", nodes[1].APIURL()))
	if err != nil {
		t.Fatal(err)
	}
	defer static.Close()
	got, err := static.Get(ctx, "k042")
	if err != nil || string(got.GetValue()) != "k042" {
		t.Fatalf("static get after a dead first endpoint: %v, %v", got, err)
	}
	if _, err := static.Put(ctx, &kvv1.PutRequest{Key: "k042", Condition: &kvv1.PutRequest_IfAbsent{IfAbsent: true}}); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("conditional put of an existing key: got %v, want failed_precondition", err)
	}
}
