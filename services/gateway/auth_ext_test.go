package gateway_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/authtest"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/services/gateway"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestGatewayPassesOnlyTheCallersToken: a gateway that checks no tokens
// itself, but holds an admin peer token, in front of a node that checks
// them. The node must see the caller's token, never the gateway's, on
// unary calls and on streams alike: a caller without a token is refused,
// and one whose token is too small for the method too.
func TestGatewayPassesOnlyTheCallersToken(t *testing.T) {
	t.Parallel()
	path, tokens := authtest.TokenFile(t, auth.ScopeRead, auth.ScopeWrite, auth.ScopeAdmin)
	tokenFile, err := auth.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	etcd := startEtcd(t)
	node, err := kvnode.New(kvnode.Config{
		NodeID: "node-1", DataDir: t.TempDir(), Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
		Logger: discardLogger(), Etcd: []string{etcd}, Auth: tokenFile, PeerToken: tokens[auth.ScopeAdmin],
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Shutdown(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	gw := startGateway(t, gateway.Config{Etcd: []string{etcd}, PeerToken: tokens[auth.ScopeAdmin]})
	kv := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL(), connect.WithGRPC())

	put := func(token string) error {
		req := connect.NewRequest(&kvv1.PutRequest{Key: "k", Value: []byte("v")})
		if token != "" {
			req.Header().Set(auth.Header, "Bearer "+token)
		}
		_, err := kv.Put(ctx, req)
		return err
	}
	pipeline := func(token string) error {
		stream := kv.Pipeline(ctx)
		if token != "" {
			stream.RequestHeader().Set(auth.Header, "Bearer "+token)
		}
		op := &kvv1.PipelineRequest{Id: 1, Operation: &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: "k", Value: []byte("v")}}}}
		if err := stream.Send(op); err != nil {
			_ = stream.CloseRequest()
			_, rerr := stream.Receive()
			_ = stream.CloseResponse()
			return rerr
		}
		_ = stream.CloseRequest()
		_, err := stream.Receive()
		_ = stream.CloseResponse()
		return err
	}
	for _, tt := range []struct {
		name  string
		token string
		want  connect.Code // 0: succeeds
	}{
		{"no token", "", connect.CodeUnauthenticated},
		{"read token", tokens[auth.ScopeRead], connect.CodePermissionDenied},
		{"write token", tokens[auth.ScopeWrite], 0},
	} {
		if err := put(tt.token); connect.CodeOf(err) != tt.want && !(tt.want == 0 && err == nil) {
			t.Errorf("Put through the gateway with %s: %v, want %v", tt.name, err, tt.want)
		}
		if err := pipeline(tt.token); connect.CodeOf(err) != tt.want && !(tt.want == 0 && err == nil) {
			t.Errorf("Pipeline through the gateway with %s: %v, want %v", tt.name, err, tt.want)
		}
	}
}
