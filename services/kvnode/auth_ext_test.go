package kvnode_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/authtest"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// allScopes are the scopes TokenFile makes a token of in these tests.
var allScopes = []auth.Scope{auth.ScopeRead, auth.ScopeWrite, auth.ScopeAdmin}

// TestEveryMethodChecksItsScope calls every method a node serves with no
// token, a bad one and each scope's, and checks the answer:
// Unauthenticated without a valid token, PermissionDenied below the
// method's scope, and anything else (the method ran, or refused the
// request for its own reasons) at or above it. Health stays open.
func TestEveryMethodChecksItsScope(t *testing.T) {
	t.Parallel()
	path, tokens := authtest.TokenFile(t, allScopes...)
	file, err := auth.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	node := startNode(t, kvnode.Config{Auth: file})
	kv := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL(), connect.WithGRPC())
	nodes := clusterv1connect.NewNodeServiceClient(h2cClient(t), node.APIURL(), connect.WithGRPC())
	handoff := clusterv1connect.NewHandoffServiceClient(h2cClient(t), node.APIURL(), connect.WithGRPC())

	with := func(h interface{ Set(string, string) }, token string) {
		if token != "" {
			h.Set("Authorization", "Bearer "+token)
		}
	}
	methods := []struct {
		name  string
		scope auth.Scope
		call  func(ctx context.Context, token string) error
	}{
		{"KVService/Get", auth.ScopeRead, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&kvv1.GetRequest{Key: "k"})
			with(req.Header(), token)
			_, err := kv.Get(ctx, req)
			return err
		}},
		{"KVService/Scan", auth.ScopeRead, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&kvv1.ScanRequest{})
			with(req.Header(), token)
			_, err := kv.Scan(ctx, req)
			return err
		}},
		{"KVService/Watch", auth.ScopeRead, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Key{Key: "k"}})
			with(req.Header(), token)
			stream, err := kv.Watch(ctx, req)
			if err != nil {
				return err
			}
			defer stream.Close()
			if !stream.Receive() {
				return stream.Err()
			}
			return nil
		}},
		{"KVService/Put", auth.ScopeWrite, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&kvv1.PutRequest{Key: "k", Value: []byte("v")})
			with(req.Header(), token)
			_, err := kv.Put(ctx, req)
			return err
		}},
		{"KVService/Delete", auth.ScopeWrite, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&kvv1.DeleteRequest{Key: "k"})
			with(req.Header(), token)
			_, err := kv.Delete(ctx, req)
			return err
		}},
		{"KVService/Batch", auth.ScopeWrite, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&kvv1.BatchRequest{Operations: []*kvv1.Operation{{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: "k"}}}}})
			with(req.Header(), token)
			_, err := kv.Batch(ctx, req)
			return err
		}},
		{"KVService/Pipeline", auth.ScopeWrite, func(ctx context.Context, token string) error {
			stream := kv.Pipeline(ctx)
			with(stream.RequestHeader(), token)
			if err := stream.Send(&kvv1.PipelineRequest{Id: 1, Operation: &kvv1.Operation{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: "k"}}}}); err != nil && !strings.Contains(err.Error(), "EOF") {
				return err
			}
			_ = stream.CloseRequest()
			_, err := stream.Receive()
			_ = stream.CloseResponse()
			return err
		}},
		{"NodeService/Stats", auth.ScopeRead, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&clusterv1.StatsRequest{})
			with(req.Header(), token)
			_, err := nodes.Stats(ctx, req)
			return err
		}},
		{"HandoffService/Copy", auth.ScopeAdmin, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&clusterv1.CopyRequest{FromMembers: []string{"a"}, ToMembers: []string{"b"}, Target: "b"})
			with(req.Header(), token)
			stream, err := handoff.Copy(ctx, req)
			if err != nil {
				return err
			}
			defer stream.Close()
			if !stream.Receive() {
				return stream.Err()
			}
			return nil
		}},
		{"HandoffService/Freeze", auth.ScopeAdmin, func(ctx context.Context, token string) error {
			req := connect.NewRequest(&clusterv1.FreezeRequest{FromMembers: []string{"a"}, ToMembers: []string{"b"}, Target: "b", Epoch: 2, LeaseId: 1})
			with(req.Header(), token)
			_, err := handoff.Freeze(ctx, req)
			return err
		}},
	}
	// Every method the node serves is in the table.
	served := kvv1.File_flux_kv_v1_kv_proto.Services().ByName("KVService").Methods().Len() +
		clusterv1.File_flux_cluster_v1_node_proto.Services().ByName("NodeService").Methods().Len() +
		clusterv1.File_flux_cluster_v1_handoff_proto.Services().ByName("HandoffService").Methods().Len()
	if served != len(methods) {
		t.Fatalf("the node serves %d methods and the table covers %d", served, len(methods))
	}

	callers := []struct {
		name  string
		token string
		scope auth.Scope
	}{
		{"no token", "", auth.ScopeNone},
		{"unknown token", "flux_not-a-listed-token", auth.ScopeNone},
		{"read", tokens[auth.ScopeRead], auth.ScopeRead},
		{"write", tokens[auth.ScopeWrite], auth.ScopeWrite},
		{"admin", tokens[auth.ScopeAdmin], auth.ScopeAdmin},
	}
	for _, m := range methods {
		for _, c := range callers {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := m.call(ctx, c.token)
			cancel()
			code := connect.CodeOf(err)
			switch {
			case c.scope == auth.ScopeNone:
				if code != connect.CodeUnauthenticated {
					t.Errorf("%s with %s: %v, want unauthenticated", m.name, c.name, err)
				}
			case c.scope < m.scope:
				if code != connect.CodePermissionDenied {
					t.Errorf("%s with %s: %v, want permission_denied", m.name, c.name, err)
				}
			default:
				if err != nil && (code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied) {
					t.Errorf("%s with %s: %v, want it let through", m.name, c.name, err)
				}
			}
			if err != nil && c.token != "" && strings.Contains(err.Error(), c.token) {
				t.Errorf("%s with %s: the error shows the token: %v", m.name, c.name, err)
			}
		}
	}
	health := grpchealth.NewClient(h2cClient(t), node.APIURL(), connect.WithGRPC())
	if resp, err := health.Check(context.Background(), &grpchealth.CheckRequest{}); err != nil || resp.Status != grpchealth.StatusServing {
		t.Errorf("health without a token: %v, %v; want serving", resp, err)
	}
}

// TestTokenFileReloads: a token added to the file works after Reload (what
// SIGHUP does), one removed stops working, and a file that does not parse
// leaves the tokens read before.
func TestTokenFileReloads(t *testing.T) {
	t.Parallel()
	path, tokens := authtest.TokenFile(t, allScopes...)
	file, err := auth.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	node := startNode(t, kvnode.Config{Auth: file})
	kv := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	get := func(token string) error {
		req := connect.NewRequest(&kvv1.GetRequest{Key: "k"})
		req.Header().Set("Authorization", "Bearer "+token)
		_, err := kv.Get(context.Background(), req)
		return err
	}
	if err := get(tokens[auth.ScopeRead]); err != nil {
		t.Fatal(err)
	}
	fresh, _ := auth.NewToken()
	if err := os.WriteFile(path, []byte("read "+auth.Hash(fresh)+" fresh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := file.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := get(fresh); err != nil {
		t.Errorf("the added token after a reload: %v", err)
	}
	if err := get(tokens[auth.ScopeRead]); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("the removed token after a reload: %v, want unauthenticated", err)
	}
	if err := os.WriteFile(path, []byte("read "+fresh+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := file.Reload(); err == nil || strings.Contains(err.Error(), fresh) {
		t.Errorf("a token in the clear: reload gave %v, want an error that does not show it", err)
	}
	if err := get(fresh); err != nil {
		t.Errorf("after a failed reload the tokens read before stay: %v", err)
	}
}

// TestPeersAuthenticate: nodes that require tokens forward requests to each
// other with the peer token, so a client's write reaches the key's owner;
// without a peer token the owner refuses the forwarded request.
func TestPeersAuthenticate(t *testing.T) {
	t.Parallel()
	path, tokens := authtest.TokenFile(t, allScopes...)
	file, err := auth.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	var nodes []*kvnode.Node
	for i, peer := range []string{tokens[auth.ScopeAdmin], ""} {
		node, err := kvnode.New(withTestDefaults(kvnode.Config{
			NodeID: fmt.Sprintf("node-%d", i+1), DataDir: t.TempDir(), Etcd: []string{etcd.ClientURL()},
			LeaseTTL: 2 * time.Second, Auth: file, PeerToken: peer,
		}))
		if err != nil {
			t.Fatal(err)
		}
		if err := node.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = node.Shutdown(context.Background()) })
		nodes = append(nodes, node)
	}
	put := func(n *kvnode.Node, key string) error {
		req := connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("v")})
		req.Header().Set("Authorization", "Bearer "+tokens[auth.ScopeWrite])
		_, err := kvv1connect.NewKVServiceClient(h2cClient(t), n.APIURL()).Put(context.Background(), req)
		return err
	}
	// Some keys belong to node-2: through node-1 (which has a peer token)
	// every write succeeds; through node-2 (which has none) the ones node-1
	// owns are refused by node-1.
	var refused int
	waitUntil(t, "both nodes on the ring", func() bool { return nodes[0].RingEpoch() == 2 && nodes[1].RingEpoch() == 2 })
	for i := range 40 {
		key := fmt.Sprintf("k%02d", i)
		if err := put(nodes[0], key); err != nil {
			t.Errorf("put %s through node-1: %v", key, err)
		}
		if err := put(nodes[1], key); connect.CodeOf(err) == connect.CodeUnauthenticated {
			refused++
		} else if err != nil {
			t.Errorf("put %s through node-2: %v", key, err)
		}
	}
	if refused == 0 || refused == 40 {
		t.Errorf("%d of 40 writes through the node without a peer token were refused, want those of node-1's keys", refused)
	}
}
