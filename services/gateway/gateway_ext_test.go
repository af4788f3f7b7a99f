package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/services/gateway"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// The embedded etcd, its clients, the nodes and the gateways all stop their
// goroutines when closed, so nothing needs ignoring.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for the cluster to reach a state.
const waitTimeout = 20 * time.Second

// protocols are the wire protocols every client-facing case runs over.
var protocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{"connect", nil},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	{"grpcweb", []connect.ClientOption{connect.WithGRPCWeb()}},
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startEtcd runs an embedded etcd for the test and returns its client URL.
func startEtcd(t testing.TB) string {
	t.Helper()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	return etcd.ClientURL()
}

// etcdClient is a client of the test's etcd, for registering services the
// way any team would.
func etcdClient(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// startNodes runs n in-memory nodes (node-1 ... node-n) clustered through
// the etcd at endpoint; tune, if not nil, adjusts each node's config. It
// returns once every node sees the whole ring.
func startNodes(t testing.TB, endpoint string, n int, tune func(cfg *kvnode.Config)) []*kvnode.Node {
	t.Helper()
	nodes := make([]*kvnode.Node, n)
	for i := range n {
		cfg := kvnode.Config{
			NodeID: fmt.Sprintf("node-%d", i+1), DataDir: t.TempDir(),
			Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Logger: discardLogger(),
			Etcd: []string{endpoint}, LeaseTTL: 2 * time.Second,
		}
		if tune != nil {
			tune(&cfg)
		}
		node, err := kvnode.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = node.Shutdown(context.Background()) })
		nodes[i] = node
	}
	// All at once, as an orchestrator starts them: no node may refuse to
	// join because the others are not live yet.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			errs[i] = node.Start(ctx)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	r := memberRing(t, n)
	for _, node := range nodes {
		client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
		waitUntil(t, "every node to see the whole ring", func() bool {
			// A write is refused while the node's view of the members is
			// older than etcd's, so a key of each member that goes through
			// shows this node routes with the full ring.
			for _, m := range r.Members() {
				key := keyOwnedBy(r, m, "probe")
				if _, err := client.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: key})); err != nil {
					return false
				}
			}
			return true
		})
	}
	return nodes
}

// memberRing is the ring of a cluster of n nodes started by startNodes.
func memberRing(t testing.TB, n int) *ring.Ring {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("node-%d", i+1)
	}
	r, err := ring.New(ids)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// keyOwnedBy finds a key with the given prefix that member owns.
func keyOwnedBy(r *ring.Ring, member, prefix string) string {
	for i := 0; ; i++ {
		if key := fmt.Sprintf("%s/%d", prefix, i); r.Owner(key) == member {
			return key
		}
	}
}

// startGateway runs a gateway on random loopback ports in front of the etcd
// at cfg.Etcd, and shuts it down when the test ends.
func startGateway(t testing.TB, cfg gateway.Config) *gateway.Gateway {
	t.Helper()
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	if cfg.ID == "" {
		cfg.ID = "gw-test"
	}
	if cfg.Logger == nil {
		cfg.Logger = discardLogger()
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatalf("new gateway: %v", err)
	}
	t.Cleanup(func() {
		if err := gw.Shutdown(context.Background()); err != nil {
			t.Errorf("gateway shutdown: %v", err)
		}
		select {
		case <-gw.Done():
		default:
			t.Error("gateway Done not closed after Shutdown")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := gw.Start(ctx); err != nil {
		t.Fatalf("start gateway: %v", err)
	}
	return gw
}

// h2cClient speaks HTTP/2 with prior knowledge, which gRPC and bidi streams
// need on cleartext ports.
func h2cClient(t testing.TB) *http.Client {
	t.Helper()
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{Protocols: &protocols}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

// codeOK is the code of a call that succeeded, which connect.CodeOf
// reports as Unknown.
const codeOK connect.Code = 0

func codeOf(err error) connect.Code {
	if err == nil {
		return codeOK
	}
	return connect.CodeOf(err)
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// callCtx bounds one call of a test.
func callCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// forwarded asks a node to serve req from its own store, as a peer's
// forwarded request: what the node holds, not what the cluster does.
func forwarded[T any](msg *T) *connect.Request[T] {
	req := connect.NewRequest(msg)
	req.Header().Set(coord.ForwardedHeader, "gateway-test")
	return req
}

// metricValue scrapes the admin port and returns the sum of the samples of
// the named metric whose labels include every given label pair.
func metricValue(t testing.TB, adminURL, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) {
			continue
		}
		if !slices.ContainsFunc(labels, func(l string) bool { return !strings.Contains(series, l) }) {
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			sum += v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestKVThroughGateway: puts through the gateway over every protocol land on
// their ring owners and only there; Get, Watch and Pipeline work through it.
func TestKVThroughGateway(t *testing.T) {
	t.Parallel()
	endpoint := startEtcd(t)
	nodes := startNodes(t, endpoint, 3, nil)
	gw := startGateway(t, gateway.Config{Etcd: []string{endpoint}})
	r := memberRing(t, len(nodes))
	direct := make(map[string]kvv1connect.KVServiceClient, len(nodes))
	for i, node := range nodes {
		direct[fmt.Sprintf("node-%d", i+1)] = kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL())
	}
	const perProtocol = 30
	keyOf := func(protocol string, i int) string { return fmt.Sprintf("%s/key-%02d", protocol, i) }
	t.Run("puts", func(t *testing.T) {
		for _, p := range protocols {
			t.Run(p.name, func(t *testing.T) {
				t.Parallel()
				client := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL(), p.opts...)
				ctx := callCtx(t)
				for i := range perProtocol {
					key := keyOf(p.name, i)
					if _, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte(key)})); err != nil {
						t.Fatalf("put %s: %v", key, err)
					}
					// The owner serves it from its own store; the others
					// refuse a key that is not theirs rather than look.
					owner := r.Owner(key)
					for id, node := range direct {
						resp, err := node.Get(ctx, forwarded(&kvv1.GetRequest{Key: key}))
						switch {
						case id == owner && (err != nil || string(resp.Msg.GetValue()) != key):
							t.Errorf("%s from its owner %s directly: %v, %v", key, id, resp, err)
						case id != owner && coord.Reason(err) != coord.ReasonNotOwner:
							t.Errorf("%s from %s, not its owner, directly: got %v, %v, want refused as not the owner", key, id, resp, err)
						}
					}
					resp, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key}))
					if err != nil || string(resp.Msg.GetValue()) != key {
						t.Fatalf("get %s through the gateway: %v, %v", key, resp, err)
					}
				}
			})
		}
	})
	// Each node holds exactly the keys the ring gives it, startNodes' probes
	// and the puts above, and no copy of any other.
	want := map[string]int{}
	for _, m := range r.Members() {
		want[r.Owner(keyOwnedBy(r, m, "probe"))]++
	}
	for _, p := range protocols {
		for i := range perProtocol {
			want[r.Owner(keyOf(p.name, i))]++
		}
	}
	for i, node := range nodes {
		id := fmt.Sprintf("node-%d", i+1)
		if want[id] < 2 {
			t.Errorf("the ring gives %s only %d keys: the check proves little", id, want[id])
		}
		if got := metricValue(t, node.AdminURL(), "flux_store_keys"); got != float64(want[id]) {
			t.Errorf("%s holds %v keys, want the %d the ring gives it", id, got, want[id])
		}
	}

	t.Run("watch", func(t *testing.T) {
		t.Parallel()
		for _, p := range protocols {
			client := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL(), p.opts...)
			key := "watched/" + p.name
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			stream, err := client.Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Key{Key: key}}))
			if err != nil {
				cancel()
				t.Fatalf("%s: watch: %v", p.name, err)
			}
			// The first response confirms the watch; a put after it must
			// reach the stream.
			if !stream.Receive() || len(stream.Msg().GetEvents()) != 0 {
				t.Fatalf("%s: first response: %v, %v", p.name, stream.Msg(), stream.Err())
			}
			if _, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("after")})); err != nil {
				t.Fatalf("%s: put: %v", p.name, err)
			}
			var events []string
			for len(events) == 0 && stream.Receive() {
				for _, e := range stream.Msg().GetEvents() {
					events = append(events, e.GetKey()+"="+string(e.GetValue()))
				}
			}
			cancel()
			_ = stream.Close()
			if want := []string{key + "=after"}; !slices.Equal(events, want) {
				t.Errorf("%s: watch got %v (%v), want %v", p.name, events, stream.Err(), want)
			}
		}
	})
	t.Run("pipeline", func(t *testing.T) {
		t.Parallel()
		for _, p := range protocols {
			client := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL(), p.opts...)
			testPipeline(t, p.name, client)
		}
	})
}

// testPipeline streams puts then gets of the same keys and checks every id
// gets its own answer: results may arrive out of order (the API says so), so
// they are put in order by id before they are checked.
func testPipeline(t *testing.T, name string, client kvv1connect.KVServiceClient) {
	t.Helper()
	const keys = 20
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	stream := client.Pipeline(ctx)
	sendErr := make(chan error, 1)
	go func() {
		defer func() { _ = stream.CloseRequest() }()
		for id := range uint64(2 * keys) {
			key := fmt.Sprintf("pipe/%s/%d", name, id%keys)
			op := &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: key, Value: []byte(key)}}}
			if id >= keys {
				op = &kvv1.Operation{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: key}}}
			}
			if err := stream.Send(&kvv1.PipelineRequest{Id: id, Operation: op}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	var results []*kvv1.PipelineResponse
	for {
		resp, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: receive after %d results: %v", name, len(results), err)
		}
		results = append(results, resp)
	}
	if err := stream.CloseResponse(); err != nil {
		t.Errorf("%s: close response: %v", name, err)
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("%s: send: %v", name, err)
	}
	slices.SortFunc(results, func(a, b *kvv1.PipelineResponse) int { return int(a.GetId()) - int(b.GetId()) })
	if len(results) != 2*keys {
		t.Fatalf("%s: got %d results, want %d", name, len(results), 2*keys)
	}
	for i, res := range results {
		key := fmt.Sprintf("pipe/%s/%d", name, i%keys)
		switch {
		case res.GetId() != uint64(i):
			t.Fatalf("%s: result #%d has id %d: an id answered twice or never", name, i, res.GetId())
		case i < keys && res.GetResult().GetPut().GetRevision() == 0:
			t.Errorf("%s: #%d: got %v, want a put result", name, i, res.GetResult())
		case i >= keys && string(res.GetResult().GetGet().GetValue()) != key:
			t.Errorf("%s: #%d: got %v, want get of %s", name, i, res.GetResult(), key)
		}
	}
}

// TestUnknownAndUnavailable: a procedure the gateway does not serve is
// Unimplemented for every protocol; a call whose only right instance is not
// live is Unavailable, and so is every call once no node is live.
func TestUnknownAndUnavailable(t *testing.T) {
	t.Parallel()
	endpoint := startEtcd(t)
	nodes := startNodes(t, endpoint, 2, nil)
	gw := startGateway(t, gateway.Config{Etcd: []string{endpoint}})
	r := memberRing(t, len(nodes))
	up, down := keyOwnedBy(r, "node-1", "k"), keyOwnedBy(r, "node-2", "k")

	unknown := []string{
		"/no.such.v1.Service/Get",                       // unknown service
		"/" + kvv1connect.KVServiceName + "/Frobnicate", // unknown method of a served service
	}
	for _, p := range protocols {
		for i, procedure := range unknown {
			client := connect.NewClient[kvv1.GetRequest, kvv1.GetResponse](h2cClient(t), gw.APIURL()+procedure, p.opts...)
			_, err := client.CallUnary(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: up}))
			if got := connect.CodeOf(err); got != connect.CodeUnimplemented {
				t.Errorf("%s #%d %s: got %v (%v), want %v", p.name, i, procedure, got, err, connect.CodeUnimplemented)
			}
		}
	}

	client := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL())
	if _, err := client.Get(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: down})); err != nil {
		t.Fatalf("get a key of node-2 while it is up: %v", err)
	}
	if err := nodes[1].Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the gateway to see node-2 leave", func() bool {
		_, err := client.Get(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: down}))
		return connect.CodeOf(err) == connect.CodeUnavailable
	})
	for _, p := range protocols {
		client := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL(), p.opts...)
		_, err := client.Get(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: down}))
		if got := connect.CodeOf(err); got != connect.CodeUnavailable || !strings.Contains(err.Error(), "node-2") {
			t.Errorf("%s: key of the down node-2: got %v (%v), want %v naming node-2", p.name, got, err, connect.CodeUnavailable)
		}
		if _, err := client.Get(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: up})); err != nil {
			t.Errorf("%s: key of the live node-1: %v", p.name, err)
		}
	}

	// With no node live at all, Flux-KV's own service is still known (its
	// schema is compiled in and its members are in etcd): Unavailable, not
	// Unimplemented, so that clients retry rather than give up.
	if err := nodes[0].Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the gateway to see node-1 leave", func() bool {
		_, err := client.Get(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: up}))
		return err != nil
	})
	tests := []struct {
		name string
		call func(kvv1connect.KVServiceClient) error
	}{
		{"get (shard key)", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Get(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: up}))
			return err
		}},
		{"scan (round-robin)", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Scan(callCtx(t), connect.NewRequest(&kvv1.ScanRequest{Prefix: "k"}))
			return err
		}},
	}
	for _, p := range protocols {
		client := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL(), p.opts...)
		for i, tt := range tests {
			if got := connect.CodeOf(tt.call(client)); got != connect.CodeUnavailable {
				t.Errorf("%s #%d %s with no node live: got %v, want %v", p.name, i, tt.name, got, connect.CodeUnavailable)
			}
		}
	}
}
