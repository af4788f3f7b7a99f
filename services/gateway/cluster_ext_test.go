package gateway_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/proto"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/nettest"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
	"github.com/fluxkv/fluxkv/services/gateway"
)

// status asks the gateway at url for the cluster's status.
func status(t testing.TB, url string, opts ...connect.ClientOption) *clusterv1.StatusResponse {
	t.Helper()
	client := clusterv1connect.NewClusterServiceClient(h2cClient(t), url, opts...)
	resp, err := client.Status(callCtx(t), connect.NewRequest(&clusterv1.StatusRequest{}))
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return resp.Msg
}

func member(res *clusterv1.StatusResponse, id string) *clusterv1.Member {
	for _, m := range res.GetMembers() {
		if m.GetId() == id {
			return m
		}
	}
	return nil
}

// TestClusterStatus: the gateway's ClusterService.Status, over every
// protocol, lists every member with what each live node reports of itself,
// the live gateways and the gateway's circuits. A node that stops stays
// listed, down; a live node that does not answer shows an error in place
// of its statistics, and the others are still reported.
func TestClusterStatus(t *testing.T) {
	t.Parallel()
	endpoint := startEtcd(t)
	nodes := startNodes(t, endpoint, 3, nil)
	var log logBuffer
	gw := startGateway(t, gateway.Config{ID: "gw-status", Etcd: []string{endpoint}, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	kv := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL())
	r := memberRing(t, len(nodes))
	for _, m := range r.Members() {
		// Through the gateway to every node, so each has a circuit.
		if _, err := kv.Put(callCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: keyOwnedBy(r, m, "status"), Value: []byte("v")})); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			res := status(t, gw.APIURL(), p.opts...)
			if res.GetGatewayId() != "gw-status" || !res.GetHoldsData() || len(res.GetMembers()) != len(nodes) {
				t.Fatalf("status: got gateway %q, holds data %v, %d members; want gw-status, true, %d",
					res.GetGatewayId(), res.GetHoldsData(), len(res.GetMembers()), len(nodes))
			}
			for i, node := range nodes {
				id := fmt.Sprintf("node-%d", i+1)
				m := res.GetMembers()[i]
				want := node.Stats()
				switch {
				case m.GetId() != id || !m.GetLive():
					t.Errorf("#%d: got member %q live %v, want %s live", i, m.GetId(), m.GetLive(), id)
				case "http://"+m.GetAddress() != node.APIURL() || "http://"+m.GetAdminAddress() != node.AdminURL():
					t.Errorf("%s: got addresses %s and %s, want %s and %s", id, m.GetAddress(), m.GetAdminAddress(), node.APIURL(), node.AdminURL())
				case m.GetStartedAt() == nil || m.GetJoinedAt() == nil || m.GetVersion() == "":
					t.Errorf("%s: started_at, joined_at or version missing: %v", id, m)
				case m.GetCircuit() != clusterv1.CircuitState_CIRCUIT_STATE_CLOSED:
					t.Errorf("%s: circuit %v, want closed", id, m.GetCircuit())
				case !proto.Equal(m.GetStats(), want) || m.GetStatsError() != "":
					t.Errorf("%s: got stats %v (error %q), want what the node reports: %v", id, m.GetStats(), m.GetStatsError(), want)
				}
			}
			if gws := res.GetGateways(); len(gws) != 1 || gws[0].GetId() != "gw-status" || "http://"+gws[0].GetAddress() != gw.APIURL() {
				t.Errorf("gateways: got %v, want gw-status at %s", gws, gw.APIURL())
			}
			var circuits []string
			for _, c := range res.GetCircuits() {
				circuits = append(circuits, c.GetService()+"/"+c.GetInstance()+"="+c.GetState().String())
			}
			for _, id := range r.Members() {
				if want := kvv1connect.KVServiceName + "/" + id + "=CIRCUIT_STATE_CLOSED"; !slices.Contains(circuits, want) {
					t.Errorf("circuits: got %v, want %s among them", circuits, want)
				}
			}
		})
	}

	t.Run("node down", func(t *testing.T) {
		if err := nodes[2].Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		var m *clusterv1.Member
		waitUntil(t, "node-3 to show as down", func() bool {
			m = member(status(t, gw.APIURL()), "node-3")
			return m != nil && !m.GetLive()
		})
		if m.GetAddress() != "" || m.GetStats() != nil || m.GetStatsError() != "" || m.GetCircuit() != clusterv1.CircuitState_CIRCUIT_STATE_UNSPECIFIED {
			t.Errorf("node-3, down: got %v, want no address, stats or circuit", m)
		}
	})

	t.Run("node silent", func(t *testing.T) {
		addr := nettest.SilentListener(t)
		client := etcdClient(t, endpoint)
		ctx := callCtx(t)
		if _, err := discovery.AddMember(ctx, client, "node-silent", true); err != nil {
			t.Fatal(err)
		}
		reg, err := discovery.Register(ctx, client, kvv1connect.KVServiceName,
			discovery.Instance{ID: "node-silent", Address: addr, StartedAt: time.Now().UTC()}, discovery.WithLogger(discardLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reg.Close(context.Background()) })
		var res *clusterv1.StatusResponse
		waitUntil(t, "node-silent to show as live", func() bool {
			res = status(t, gw.APIURL())
			return member(res, "node-silent").GetLive()
		})
		// A short phrase: the transport's error, which names the node's
		// address, stays in the gateway's log.
		if m := member(res, "node-silent"); m.GetStats() != nil || m.GetStatsError() != "timed out" {
			t.Errorf("node-silent: got stats %v, error %q; want none, and \"timed out\"", m.GetStats(), m.GetStatsError())
		}
		// The details are in the gateway's log, once, however often Status
		// is asked.
		status(t, gw.APIURL())
		if got := strings.Count(log.String(), "node=node-silent address="+addr); got != 1 {
			t.Errorf("the gateway logged node-silent's failure %d times, want once:\n%s", got, log.String())
		}
		if m := member(res, "node-1"); m.GetStats().GetNodeId() != "node-1" {
			t.Errorf("node-1 next to a silent node: got stats %v (error %q)", m.GetStats(), m.GetStatsError())
		}
	})
}

// logBuffer collects a gateway's log, written from many goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestNodeServiceNotProxied: NodeService describes the node that answers
// it, and HandoffService is internal to the nodes, so the gateway never
// proxies either, even when an instance registers them in etcd: calls get
// Unimplemented and reflection does not list them. A ClusterService
// registered in etcd does not displace the gateway's own.
func TestNodeServiceNotProxied(t *testing.T) {
	t.Parallel()
	endpoint := startEtcd(t)
	nodes := startNodes(t, endpoint, 1, nil)
	client := etcdClient(t, endpoint)
	addr := strings.TrimPrefix(nodes[0].APIURL(), "http://")
	for _, service := range []string{clusterv1connect.NodeServiceName, clusterv1connect.HandoffServiceName, clusterv1connect.ClusterServiceName} {
		ctx := callCtx(t)
		reg, err := discovery.Register(ctx, client, service,
			discovery.Instance{ID: "node-1", Address: addr, StartedAt: time.Now().UTC()}, discovery.WithLogger(discardLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reg.Close(context.Background()) })
	}
	// Registered before the gateway starts, so its first table, built
	// during Start, has seen them.
	gw := startGateway(t, gateway.Config{ID: "gw-local", Etcd: []string{endpoint}})

	// The node itself answers NodeService.
	direct := clusterv1connect.NewNodeServiceClient(h2cClient(t), nodes[0].APIURL())
	if _, err := direct.Stats(callCtx(t), connect.NewRequest(&clusterv1.StatsRequest{})); err != nil {
		t.Fatalf("stats from the node: %v", err)
	}
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			stats := clusterv1connect.NewNodeServiceClient(h2cClient(t), gw.APIURL(), p.opts...)
			_, err := stats.Stats(callCtx(t), connect.NewRequest(&clusterv1.StatsRequest{}))
			if got := codeOf(err); got != connect.CodeUnimplemented {
				t.Errorf("NodeService.Stats through the gateway: got %v (%v), want unimplemented", got, err)
			}
			handoff := clusterv1connect.NewHandoffServiceClient(h2cClient(t), gw.APIURL(), p.opts...)
			copyStream, err := handoff.Copy(callCtx(t), connect.NewRequest(&clusterv1.CopyRequest{
				FromMembers: []string{"node-1"}, ToMembers: []string{"node-1", "node-2"}, Target: "node-2"}))
			if err == nil {
				// A proxied copy would never end: one message is enough.
				if copyStream.Receive() {
					t.Errorf("HandoffService.Copy through the gateway sent %v", copyStream.Msg())
				}
				err = copyStream.Err()
				_ = copyStream.Close()
			}
			if got := codeOf(err); got != connect.CodeUnimplemented {
				t.Errorf("HandoffService.Copy through the gateway: got %v (%v), want unimplemented", got, err)
			}
			// The node does not serve ClusterService: only the gateway's own
			// can answer.
			if res := status(t, gw.APIURL(), p.opts...); res.GetGatewayId() != "gw-local" {
				t.Errorf("ClusterService.Status: answered by %q, want gw-local", res.GetGatewayId())
			}
		})
	}

	stream := grpcreflect.NewClient(h2cClient(t), gw.APIURL()).NewStream(callCtx(t))
	defer stream.Close()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	listed := fmt.Sprint(names)
	if !slices.Contains(names, kvv1connect.KVServiceName) || !slices.Contains(names, clusterv1connect.ClusterServiceName) ||
		slices.Contains(names, clusterv1connect.NodeServiceName) || slices.Contains(names, clusterv1connect.HandoffServiceName) {
		t.Errorf("reflection lists %s, want KVService and ClusterService and not NodeService or HandoffService", listed)
	}
	if _, err := stream.FileContainingSymbol(clusterv1connect.ClusterServiceName); err != nil {
		t.Errorf("reflection on ClusterService: %v", err)
	}
	health := grpchealth.NewClient(h2cClient(t), gw.APIURL())
	for service, want := range map[string]connect.Code{
		clusterv1connect.ClusterServiceName: codeOK,
		clusterv1connect.NodeServiceName:    connect.CodeNotFound,
		clusterv1connect.HandoffServiceName: connect.CodeNotFound,
	} {
		_, err := health.Check(callCtx(t), &grpchealth.CheckRequest{Service: service})
		if got := codeOf(err); got != want {
			t.Errorf("health of %s: got %v (%v), want %v", service, got, err, want)
		}
	}
}

// TestConsole: the gateway serves Config.Console at /ui/ and redirects /ui
// there, outside the rate limits, which count API calls.
func TestConsole(t *testing.T) {
	t.Parallel()
	endpoint := startEtcd(t)
	startNodes(t, endpoint, 1, nil)
	console := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "console %s", r.URL.Path) })
	gw := startGateway(t, gateway.Config{
		Etcd: []string{endpoint}, Console: console,
		Policies: gateway.Policies{RateLimit: rpcpolicy.LimiterConfig{ClientRate: 0.001, ClientBurst: 1}},
	})
	noRedirects := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for path, want := range map[string]string{"/ui": "/ui/", "/ui?protocol=connect": "/ui/?protocol=connect"} {
		resp, err := noRedirects.Get(gw.APIURL() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// Relative, so that it holds behind a proxy that adds a path.
		loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
		if err != nil || resp.StatusCode != http.StatusMovedPermanently || loc.RequestURI() != want || strings.HasPrefix(resp.Header.Get("Location"), "/") {
			t.Errorf("GET %s: got %s to %q, want a permanent, relative redirect to %s", path, resp.Status, resp.Header.Get("Location"), want)
		}
	}
	// More requests than the client's burst: the console is not limited.
	for i, path := range []string{"/ui/", "/ui/console.js", "/ui/console.css", "/ui/", "/ui/console.js"} {
		resp, err := http.Get(gw.APIURL() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "console " + strings.TrimPrefix(path, "/ui"); resp.StatusCode != http.StatusOK || string(body) != want {
			t.Errorf("#%d: GET %s: got %s %q, want 200 %q", i, path, resp.Status, body, want)
		}
	}
	// API calls are: the first one passes and the next is refused.
	kv := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL())
	var codes []connect.Code
	for range 2 {
		_, err := kv.Get(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: "k"}))
		codes = append(codes, codeOf(err))
	}
	if want := []connect.Code{codeOK, connect.CodeResourceExhausted}; !slices.Equal(codes, want) {
		t.Errorf("two API calls: got %v, want %v", codes, want)
	}
}
