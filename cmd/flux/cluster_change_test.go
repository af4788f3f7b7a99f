package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/services/gateway"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestClusterMembershipCommands: remove-node moves a member's keys to the
// others and waits for the flip; a removal that cannot finish (its source
// is down) shows in cluster status with its copies' progress, and
// abort-change through a gateway abandons it.
func TestClusterMembershipCommands(t *testing.T) {
	t.Parallel()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	var nodes []*kvnode.Node
	for i := range 3 {
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
	gw, err := gateway.New(gateway.Config{
		ID: "gw-1", Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Etcd: []string{etcd.ClientURL()},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Shutdown(context.Background())
	if err := gw.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := []string{"--etcd", etcd.ClientURL()}
	for i := range 200 {
		if got := flux("", append([]string{"put", fmt.Sprintf("k%03d", i), fmt.Sprintf("v%d", i)}, e...)...); got.code != 0 {
			t.Fatalf("put through etcd: %+v", got)
		}
	}

	got := flux("", append([]string{"cluster", "remove-node", "node-3"}, e...)...)
	if got.code != 0 || !strings.Contains(got.stdout, "removed node-3: the ring is at epoch 4") {
		t.Fatalf("cluster remove-node node-3: %+v", got)
	}
	for i := range 200 {
		want := fmt.Sprintf("v%d\n", i)
		if got := flux("", append([]string{"get", fmt.Sprintf("k%03d", i)}, e...)...); got.code != 0 || got.stdout != want {
			t.Fatalf("get k%03d after the removal: %+v, want %q", i, got, want)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for nodes[2].Stats().GetKeyCount() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("node-3 still holds %d keys after its removal", nodes[2].Stats().GetKeyCount())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := flux("", append([]string{"cluster", "remove-node", "node-9"}, e...)...); got.code != exitNotFound || !strings.Contains(got.stderr, "not a member") {
		t.Errorf("remove-node of a stranger: %+v", got)
	}
	if got := flux("", "cluster", "remove-node", "node-1"); got.code != exitError || !strings.Contains(got.stderr, "--etcd") {
		t.Errorf("remove-node without --etcd or --endpoint: %+v", got)
	}

	// node-2 goes down: its removal cannot copy anything, so it stays in
	// progress, and status says so.
	if err := nodes[1].Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got = flux("", "cluster", "remove-node", "node-2", "--endpoint", gw.APIURL(), "--wait", "0")
	if got.code != 0 || !strings.Contains(got.stdout, "removing node-2: the ring goes to epoch 5") {
		t.Fatalf("cluster remove-node node-2 --wait 0 through the gateway: %+v", got)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		got = flux("", append([]string{"cluster", "status"}, e...)...)
		if strings.Contains(got.stdout, "change in progress: removing node-2, to epoch 5 (members node-1)") && strings.Contains(got.stdout, "source node-2 is not live") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster status during a stuck removal: %+v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got.code != exitNotFound {
		t.Errorf("cluster status with node-2 down: exit %d, want %d", got.code, exitNotFound)
	}
	for _, want := range []string{"TARGET", "node-1  node-2  COPYING", "source node-2 is not live"} {
		if !strings.Contains(got.stdout, want) {
			t.Errorf("cluster status during the removal lacks %q:\n%s", want, got.stdout)
		}
	}
	if got := flux("", "cluster", "abort-change", "--epoch", "6", "--endpoint", gw.APIURL()); got.code != exitError || !strings.Contains(got.stderr, "not the one named") {
		t.Errorf("abort-change of the wrong epoch: %+v", got)
	}
	if got := flux("", "cluster", "abort-change", "--epoch", "5", "--endpoint", gw.APIURL()); got.code != 0 {
		t.Fatalf("abort-change: %+v", got)
	}
	etcdc, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.ClientURL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer etcdc.Close()
	cur, err := discovery.ReadCurrent(context.Background(), etcdc)
	if err != nil || cur.Epoch != 4 || strings.Join(cur.Members, ",") != "node-1,node-2" {
		t.Errorf("ring after the abort: %+v, %v; want epoch 4 with node-1 and node-2", cur, err)
	}
	if next, err := discovery.ReadNext(context.Background(), etcdc); err != nil || next != nil {
		t.Errorf("change after the abort: %+v, %v; want none", next, err)
	}
	if got := flux("", append([]string{"cluster", "abort-change", "--epoch", "5"}, e...)...); got.code != exitError || !strings.Contains(got.stderr, "no membership change") {
		t.Errorf("abort-change with no change in progress: %+v", got)
	}
}
