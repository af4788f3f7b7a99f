package kvnode_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/amqptest"
	"github.com/fluxkv/fluxkv/internal/authtest"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/tlsfiles"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestAdminPortNeedsAdminToken: with a token file, the admin port's
// metrics, profiles and log rewrite need an admin token; /healthz stays
// open for load balancers.
func TestAdminPortNeedsAdminToken(t *testing.T) {
	t.Parallel()
	path, tokens := authtest.TokenFile(t, allScopes...)
	file, err := auth.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	node := startNode(t, kvnode.Config{Auth: file})
	do := func(method, path, token string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, node.AdminURL()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set(auth.Header, "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, tt := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/healthz", "", http.StatusOK},
		{"GET", "/metrics", "", http.StatusUnauthorized},
		{"GET", "/metrics", "flux_not-a-token", http.StatusUnauthorized},
		{"GET", "/metrics", tokens[auth.ScopeRead], http.StatusForbidden},
		{"GET", "/metrics", tokens[auth.ScopeWrite], http.StatusForbidden},
		{"GET", "/metrics", tokens[auth.ScopeAdmin], http.StatusOK},
		{"GET", "/debug/pprof/", "", http.StatusUnauthorized},
		{"GET", "/debug/pprof/", tokens[auth.ScopeAdmin], http.StatusOK},
		{"POST", "/aof/rewrite", tokens[auth.ScopeWrite], http.StatusForbidden},
	} {
		code, body := do(tt.method, tt.path, tt.token)
		if code != tt.want {
			t.Errorf("%s %s with %s: %d %q, want %d", tt.method, tt.path, nameOf(tokens, tt.token), code, body, tt.want)
		}
		for _, tok := range tokens {
			if strings.Contains(body, tok) {
				t.Errorf("%s %s: the answer shows a token", tt.method, tt.path)
			}
		}
	}
}

// TestAuthReflection: reflection is open by default and needs a read
// token with AuthReflection.
func TestAuthReflection(t *testing.T) {
	t.Parallel()
	path, tokens := authtest.TokenFile(t, allScopes...)
	file, err := auth.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	list := func(node *kvnode.Node, token string) error {
		client := grpcreflect.NewClient(h2cClient(t), node.APIURL(), connect.WithGRPC(), connect.WithInterceptors(auth.Bearer(token)))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stream := client.NewStream(ctx)
		defer stream.Close()
		_, err := stream.ListServices()
		return err
	}
	open := startNode(t, kvnode.Config{Auth: file})
	if err := list(open, ""); err != nil {
		t.Errorf("reflection without a token, by default: %v", err)
	}
	guarded := startNode(t, kvnode.Config{Auth: file, AuthReflection: true})
	if err := list(guarded, ""); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("guarded reflection without a token: %v, want unauthenticated", err)
	}
	if err := list(guarded, tokens[auth.ScopeRead]); err != nil {
		t.Errorf("guarded reflection with a read token: %v", err)
	}
	// Health stays open either way.
	health := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](h2cClient(t), guarded.APIURL()+"/grpc.health.v1.Health/Check", connect.WithGRPC())
	if _, err := health.CallUnary(context.Background(), connect.NewRequest(&healthpb.HealthCheckRequest{})); err != nil {
		t.Errorf("health with guarded reflection, without a token: %v", err)
	}
}

// TestCDCOverAMQPS: the relay publishes to a broker that speaks TLS
// (amqps://), verifying it with the configured CA; without that CA it
// does not connect, and publishes nothing.
func TestCDCOverAMQPS(t *testing.T) {
	t.Parallel()
	broker := amqptest.URL(t)
	proxy := amqptest.NewTLSProxy(t, broker)
	trusting, err := tlsfiles.Load(tlsfiles.Files{CA: proxy.CAFile()})
	if err != nil {
		t.Fatal(err)
	}

	queue := amqptest.Queue(t, broker)
	nodeID := cdcNodeID("cdc-amqps")
	node := startCDCNode(t, kvnode.Config{
		NodeID: nodeID, DataDir: t.TempDir(), AppendOnly: true,
		AMQPURL: proxy.URL(), AMQPTLS: trusting.Client(), CDCQueue: queue,
	})
	// The relay declares the queue once it is connected.
	got := amqptest.Consume(t, broker, queue)
	kv := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	const n = 20
	for i := range n {
		if _, err := kv.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: "k" + string(rune('a'+i)), Value: []byte("v")})); err != nil {
			t.Fatal(err)
		}
	}
	got.Wait(t, nodeID, n, 30*time.Second)
	got.CheckExactlyOnce(t, nodeID, n, true)

	// The same broker, not trusted: the relay never connects.
	untrustedID := cdcNodeID("cdc-amqps-untrusted")
	untrusted := startCDCNode(t, kvnode.Config{
		NodeID: untrustedID, DataDir: t.TempDir(), AppendOnly: true,
		AMQPURL: proxy.URL(), CDCQueue: queue,
	})
	kv = kvv1connect.NewKVServiceClient(h2cClient(t), untrusted.APIURL())
	if _, err := kv.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: "k", Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if adminMetric(t, untrusted, "flux_cdc_connected") != 0 {
			t.Fatal("the relay connected to a broker whose certificate it cannot verify")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(got.Unique(untrustedID)) != 0 {
		t.Error("events published through a broker whose certificate the relay cannot verify")
	}
}

func nameOf(tokens map[auth.Scope]string, token string) string {
	for scope, tok := range tokens {
		if tok == token {
			return scope.String() + " token"
		}
	}
	if token == "" {
		return "no token"
	}
	return "an unknown token"
}
