package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fluxkv/fluxkv/client"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// A node to talk to, so the example runs on its own; in real use, pass your
// cluster's etcd endpoints with client.WithEtcd instead.
func exampleNode() (*kvnode.Node, func()) {
	dir, _ := os.MkdirTemp("", "flux-example")
	node, err := kvnode.New(kvnode.Config{
		NodeID: "example", Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", DataDir: dir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	if err := node.Start(context.Background()); err != nil {
		panic(err)
	}
	return node, func() {
		_ = node.Shutdown(context.Background())
		_ = os.RemoveAll(dir)
	}
}

func Example() {
	node, stop := exampleNode()
	defer stop()

	ctx := context.Background()
	c, err := client.New(ctx, client.WithEndpoints(node.APIURL()))
	if err != nil {
		panic(err)
	}
	defer c.Close()

	if _, err := c.Put(ctx, &kvv1.PutRequest{Key: "greeting", Value: []byte("hello"), Ttl: durationpb.New(time.Hour)}); err != nil {
		panic(err)
	}
	got, err := c.Get(ctx, "greeting")
	if err != nil {
		panic(err)
	}
	fmt.Println(string(got.GetValue()), got.GetTtl().AsDuration() > 59*time.Minute)

	// A compare-and-swap on the revision Get returned.
	_, err = c.Put(ctx, &kvv1.PutRequest{Key: "greeting", Value: []byte("bonjour"),
		Condition: &kvv1.PutRequest_IfRevision{IfRevision: got.GetRevision()}})
	fmt.Println(err == nil)
	// Output:
	// hello true
	// true
}
