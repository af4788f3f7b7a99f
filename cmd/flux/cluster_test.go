package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestClusterCommands: key commands route through etcd with --etcd, and
// cluster status lists every member, live or not.
func TestClusterCommands(t *testing.T) {
	t.Parallel()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	var nodes []*kvnode.Node
	for i := range 2 {
		node, err := kvnode.New(kvnode.Config{
			NodeID: fmt.Sprintf("node-%d", i+1), Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
			DataDir: t.TempDir(), Etcd: []string{etcd.ClientURL()}, LeaseTTL: time.Second,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := node.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer node.Shutdown(context.Background())
		nodes = append(nodes, node)
	}
	e := []string{"--etcd", etcd.ClientURL()}
	for i := range 20 {
		if got := flux("", append([]string{"put", fmt.Sprintf("k%02d", i), "v"}, e...)...); got.code != 0 {
			t.Fatalf("put through etcd: %+v", got)
		}
	}
	if got := flux("", append([]string{"scan", "--keys-only"}, e...)...); got.code != 0 || strings.Count(got.stdout, "\n") != 20 {
		t.Fatalf("scan through etcd: %+v", got)
	}
	got := flux("", append([]string{"cluster", "status"}, e...)...)
	if got.code != 0 || !strings.Contains(got.stdout, "node-1  yes") || !strings.Contains(got.stdout, "node-2  yes") {
		t.Fatalf("cluster status: %+v", got)
	}
	if err := nodes[1].Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got = flux("", append([]string{"cluster", "status", "--json"}, e...)...)
	if got.code != 1 || !strings.Contains(got.stdout, `"id": "node-2",`+"\n"+`      "live": false`) {
		t.Fatalf("cluster status with node-2 down: %+v", got)
	}
}
