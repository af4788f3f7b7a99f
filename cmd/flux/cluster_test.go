package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/nettest"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/services/gateway"
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
	// A gateway in front: status lists it with the circuit of every node
	// it has called.
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
	for i := range 20 {
		if got := flux("", "get", fmt.Sprintf("k%02d", i), "--endpoint", gw.APIURL()); got.code != 0 || got.stdout != "v\n" {
			t.Fatalf("get through the gateway: %+v", got)
		}
	}
	got := flux("", append([]string{"cluster", "status"}, e...)...)
	// Two nodes joined, one epoch each.
	if got.code != 0 || !strings.HasPrefix(got.stdout, "ring epoch 2\n") || !strings.Contains(got.stdout, "node-1  yes") || !strings.Contains(got.stdout, "node-2  yes") {
		t.Fatalf("cluster status: %+v", got)
	}
	for _, want := range []string{"GATEWAY", "gw-1", "flux.kv.v1.KVService/node-1=closed", "flux.kv.v1.KVService/node-2=closed"} {
		if !strings.Contains(got.stdout, want) {
			t.Errorf("cluster status lacks %q:\n%s", want, got.stdout)
		}
	}
	// Each live node reports the keys it holds (NodeService.Stats): the 20
	// written above, between them.
	got = flux("", append([]string{"cluster", "status", "--json"}, e...)...)
	var status struct {
		Epoch   int64 `json:"epoch"`
		Members []struct {
			ID   string `json:"id"`
			Keys *int64 `json:"keys"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(got.stdout), &status); err != nil {
		t.Fatalf("cluster status --json: %v\n%s", err, got.stdout)
	}
	if status.Epoch != 2 {
		t.Errorf("cluster status --json: epoch %d, want 2:\n%s", status.Epoch, got.stdout)
	}
	var keys int64
	for _, m := range status.Members {
		if m.Keys == nil {
			t.Errorf("cluster status --json: no key count for %s", m.ID)
			continue
		}
		keys += *m.Keys
	}
	if keys != 20 {
		t.Errorf("cluster status --json: the members hold %d keys between them, want 20:\n%s", keys, got.stdout)
	}
	// A node and a gateway that hang (registered, live, never answering)
	// cost the command a second each and hide nothing else: both are
	// asked alongside the others, each within its own deadline.
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.ClientURL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	hung := nettest.SilentListener(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// "a-hung" sorts first, so a command that asked in turn under one
	// deadline would spend all of it there.
	if _, err := discovery.AddMember(ctx, client, "a-hung", true); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	regNode, err := discovery.Register(ctx, client, kvv1connect.KVServiceName, discovery.Instance{ID: "a-hung", Address: hung, AdminAddress: hung, StartedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	regGateway, err := discovery.RegisterGateway(ctx, client, discovery.Instance{ID: "a-hung-gw", Address: hung, AdminAddress: hung, StartedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	got = flux("", append([]string{"cluster", "status", "--json", "--timeout", "5s"}, e...)...)
	var withHung struct {
		Members []struct {
			ID   string `json:"id"`
			Live bool   `json:"live"`
			Keys *int64 `json:"keys"`
		} `json:"members"`
		Gateways []struct {
			ID       string            `json:"id"`
			Breakers map[string]string `json:"breakers"`
			Error    string            `json:"error"`
		} `json:"gateways"`
	}
	if err := json.Unmarshal([]byte(got.stdout), &withHung); err != nil || got.code != 0 {
		t.Fatalf("cluster status with a hung node: %v\n%+v", err, got)
	}
	for _, m := range withHung.Members {
		if hasKeys := m.Keys != nil; !m.Live || hasKeys == (m.ID == "a-hung") {
			t.Errorf("cluster status with a hung node: member %s: live %v, keys %v; want live, and a key count unless hung", m.ID, m.Live, m.Keys)
		}
	}
	for _, g := range withHung.Gateways {
		if hung := g.ID == "a-hung-gw"; hung && g.Error != "timed out" || !hung && (g.Error != "" || len(g.Breakers) == 0) {
			t.Errorf("cluster status with a hung gateway: gateway %s: breakers %v, error %q", g.ID, g.Breakers, g.Error)
		}
	}
	if len(withHung.Members) != 3 || len(withHung.Gateways) != 2 {
		t.Errorf("cluster status with a hung node and gateway: got %d members and %d gateways, want 3 and 2:\n%s", len(withHung.Members), len(withHung.Gateways), got.stdout)
	}
	for _, reg := range []*discovery.Registration{regNode, regGateway} {
		if err := reg.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := discovery.RemoveMember(ctx, client, "a-hung"); err != nil {
		t.Fatal(err)
	}
	// The ring everyone routes by is the record, not the member keys:
	// status lists what the record names, at its epoch.
	if _, err := client.Put(ctx, discovery.RingCurrentKey, `{"epoch": 7, "members": ["node-1", "node-2", "node-x"]}`); err != nil {
		t.Fatal(err)
	}
	got = flux("", append([]string{"cluster", "status", "--json"}, e...)...)
	var recorded struct {
		Epoch   int64 `json:"epoch"`
		Members []struct {
			ID   string `json:"id"`
			Live bool   `json:"live"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(got.stdout), &recorded); err != nil || got.code != 1 || recorded.Epoch != 7 ||
		len(recorded.Members) != 3 || recorded.Members[2].ID != "node-x" || recorded.Members[2].Live {
		t.Fatalf("cluster status with a ring record naming node-x: got %v, %+v; want epoch 7, node-x down:\n%+v", err, recorded, got)
	}
	if _, err := client.Put(ctx, discovery.RingCurrentKey, `{"epoch": 8, "members": ["node-1", "node-2"]}`); err != nil {
		t.Fatal(err)
	}

	if err := nodes[1].Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got = flux("", append([]string{"cluster", "status", "--json"}, e...)...)
	if got.code != 1 || !strings.Contains(got.stdout, `"id": "node-2",`+"\n"+`      "live": false`) {
		t.Fatalf("cluster status with node-2 down: %+v", got)
	}
}
