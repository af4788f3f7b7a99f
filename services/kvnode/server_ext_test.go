package kvnode_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestGRPCGoInterop calls the node with grpc-go, the reference gRPC
// implementation, to prove the h2c port is a real gRPC server.
func TestGRPCGoInterop(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{})
	conn, err := grpc.NewClient(strings.TrimPrefix(node.APIURL(), "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ctx := context.Background()
	putResp := new(kvv1.PutResponse)
	if err := conn.Invoke(ctx, kvv1connect.KVServicePutProcedure, &kvv1.PutRequest{Key: "k", Value: []byte("v")}, putResp); err != nil {
		t.Fatalf("put: %v", err)
	}
	getResp := new(kvv1.GetResponse)
	if err := conn.Invoke(ctx, kvv1connect.KVServiceGetProcedure, &kvv1.GetRequest{Key: "k"}, getResp); err != nil {
		t.Fatalf("get: %v", err)
	}
	if string(getResp.GetValue()) != "v" || getResp.GetRevision() != putResp.GetRevision() {
		t.Errorf("get: got %v, want v at revision %d", getResp, putResp.GetRevision())
	}
	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: kvv1connect.KVServiceName})
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	if health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: got %v, want SERVING", health.GetStatus())
	}
}

// TestConnectGET reads through HTTP GET, which Connect allows for
// NO_SIDE_EFFECTS methods, as both a connect client and curl would.
func TestConnectGET(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL(), connect.WithHTTPGet())
	put(t, client, &kvv1.PutRequest{Key: "a b", Value: []byte("spaced")})
	req := connect.NewRequest(&kvv1.GetRequest{Key: "a b"})
	resp, err := client.Get(context.Background(), req)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if req.HTTPMethod() != http.MethodGet || string(resp.Msg.GetValue()) != "spaced" {
		t.Errorf("got %q via %s, want spaced via GET", resp.Msg.GetValue(), req.HTTPMethod())
	}

	q := url.Values{"encoding": {"json"}, "message": {`{"key":"a b"}`}}
	httpResp, err := http.Get(node.APIURL() + kvv1connect.KVServiceGetProcedure + "?" + q.Encode())
	if err != nil {
		t.Fatalf("plain GET: %v", err)
	}
	defer httpResp.Body.Close()
	body, _ := io.ReadAll(httpResp.Body)
	if httpResp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"value":"c3BhY2Vk"`) {
		t.Errorf("plain GET: got %d %s", httpResp.StatusCode, body)
	}
}

func TestReflection(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{})
	client := grpcreflect.NewClient(h2cClient(t), node.APIURL())
	stream := client.NewStream(context.Background())
	defer stream.Close()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatalf("list services: %v", err)
	}
	var got []string
	for _, n := range names {
		got = append(got, string(n))
	}
	for _, want := range []string{kvv1connect.KVServiceName, clusterv1connect.NodeServiceName, clusterv1connect.HandoffServiceName, "grpc.health.v1.Health"} {
		if !slices.Contains(got, want) {
			t.Errorf("reflection lists %v, want it to include %s", got, want)
		}
	}
	files, err := stream.FileContainingSymbol(kvv1connect.KVServiceName)
	if err != nil {
		t.Fatalf("file containing symbol: %v", err)
	}
	if len(files) == 0 || files[0].GetName() != "flux/kv/v1/kv.proto" {
		t.Fatalf("got %d files, want flux/kv/v1/kv.proto first", len(files))
	}
	// Users read the schema's comments through reflection (grpcurl describe).
	if len(files[0].GetSourceCodeInfo().GetLocation()) == 0 {
		t.Errorf("reflection serves kv.proto without its comments")
	}
}

func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	put(t, client, &kvv1.PutRequest{Key: "k", Value: []byte("v")})
	tests := []struct {
		path string
		want string
	}{
		{"/healthz", "ok"},
		{"/metrics", `flux_rpc_handled_total{code="ok",method="Put",service="flux.kv.v1.KVService"} 1`},
		{"/metrics", "flux_store_keys 1"},
		{"/debug/pprof/", "goroutine"},
	}
	for i, tt := range tests {
		resp, err := http.Get(node.AdminURL() + tt.path)
		if err != nil {
			t.Fatalf("#%d %s: %v", i, tt.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), tt.want) {
			t.Errorf("#%d %s: got %d, want 200 containing %q", i, tt.path, resp.StatusCode, tt.want)
		}
	}
}

func TestCORSPreflight(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{CORSOrigins: []string{"https://console.example"}})
	req, _ := http.NewRequest(http.MethodOptions, node.APIURL()+kvv1connect.KVServiceGetProcedure, nil)
	req.Header.Set("Origin", "https://console.example")
	req.Header.Set("Access-Control-Request-Method", http.MethodPost)
	req.Header.Set("Access-Control-Request-Headers", "content-type,x-grpc-web")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("preflight: %v", err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "https://console.example" {
		t.Errorf("allowed origin: got %q", got)
	}
	req.Header.Set("Origin", "https://elsewhere.example")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("preflight: %v", err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("origin not in the list was allowed: %q", got)
	}
}

func TestShutdown(t *testing.T) {
	t.Parallel()
	node := startNode(t, kvnode.Config{})
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	put(t, client, &kvv1.PutRequest{Key: "k", Value: []byte("v")})
	if err := node.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case <-node.Done():
	default:
		t.Fatal("Done not closed after Shutdown returned")
	}
	if _, err := client.Get(context.Background(), connect.NewRequest(&kvv1.GetRequest{Key: "k"})); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("get after shutdown: got %v, want unavailable", err)
	}
	if err := node.Shutdown(context.Background()); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []kvnode.Config{
		{NodeID: "has space", Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0"},
		{NodeID: "n", MaxValueBytes: -1, Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0"},
		{NodeID: "n", Listen: "256.0.0.1:0", AdminListen: "127.0.0.1:0"},
	}
	for i, cfg := range tests {
		cfg.DataDir = t.TempDir()
		if node, err := kvnode.New(cfg); err == nil {
			_ = node.Shutdown(context.Background())
			t.Errorf("#%d: New(%+v) succeeded, want an error", i, cfg)
		}
	}
}
