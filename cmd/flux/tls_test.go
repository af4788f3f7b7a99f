package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/testcerts"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/platform/tlsfiles"
)

// TestTLSEndToEnd runs a cluster in which every connection is mutual TLS,
// with certificates made by the test: etcd, two nodes and a gateway,
// started by their commands. Clients call through the gateway over
// Connect, gRPC and gRPC-Web and straight to the nodes (which forward to
// each other); the SDK routes by etcd; cluster status asks every node and
// the gateway's admin port. Clients without the right certificate, or
// that do not trust the CA, or that speak cleartext, get nothing.
func TestTLSEndToEnd(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA(t, "flux-test")
	etcdCert, nodeCert, gwCert, cli := ca.Server("etcd"), ca.Both("node"), ca.Both("gateway"), ca.Client("cli")
	rogue := testcerts.NewCA(t, "rogue").Client("intruder")

	etcd, err := etcdembed.Start(t.TempDir(), "https://127.0.0.1:0", etcdembed.WithClientTLS(etcdCert.Cert, etcdCert.Key, ca.File))
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	if !strings.HasPrefix(etcd.ClientURL(), "https://") {
		t.Fatalf("etcd client URL %s: want https", etcd.ClientURL())
	}
	etcdFlags := func(p testcerts.Pair) []string {
		return []string{"--etcd", etcd.ClientURL(), "--etcd-tls-ca", ca.File, "--etcd-tls-cert", p.Cert, "--etcd-tls-key", p.Key}
	}
	serverFlags := func(p testcerts.Pair) []string {
		return append(etcdFlags(p),
			"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--tls-cert", p.Cert, "--tls-key", p.Key, "--tls-client-ca", ca.File,
			"--peer-tls-ca", ca.File, "--peer-tls-cert", p.Cert, "--peer-tls-key", p.Key)
	}

	// A client of etcd over TLS, to see what the servers register.
	etcdClientTLS, err := tlsfiles.Load(tlsfiles.Files{CA: ca.File, Cert: cli.Cert, Key: cli.Key})
	if err != nil {
		t.Fatal(err)
	}
	etcdc, err := discovery.Connect(context.Background(), []string{etcd.ClientURL()}, etcdClientTLS.Client())
	if err != nil {
		t.Fatal(err)
	}
	defer etcdc.Close()
	watcher := discovery.NewWatcher(etcdc, nil)
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := watcher.Start(wctx); err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()

	ctx, stop := context.WithCancel(context.Background())
	var (
		servers sync.WaitGroup
		logs    lockedBuffer
	)
	defer func() {
		stop()
		servers.Wait()
		if t.Failed() {
			t.Logf("server logs:\n%s", logs.String())
		}
	}()
	start := func(args ...string) {
		servers.Go(func() {
			env := &environment{ctx: ctx, stdin: strings.NewReader(""), stdout: io.Discard, stderr: &logs}
			if code := run(env, args); code != exitOK {
				t.Errorf("flux %s exited %d", args[0], code)
			}
		})
	}
	await := func(what string, ok func(*discovery.Snapshot) bool) *discovery.Snapshot {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if snap := watcher.Snapshot(); ok(snap) {
				return snap
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not registered within 30s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	nodes := func(s *discovery.Snapshot) map[string]discovery.Instance {
		return s.Instances[kvv1connect.KVServiceName]
	}
	for _, id := range []string{"node-1", "node-2"} {
		start(append([]string{"node", "--node-id", id, "--data-dir", t.TempDir()}, serverFlags(nodeCert)...)...)
		await(id, func(s *discovery.Snapshot) bool { _, ok := nodes(s)[id]; return ok })
	}
	start(append([]string{"gateway", "--id", "gw-1"}, serverFlags(gwCert)...)...)
	snap := await("gw-1", func(s *discovery.Snapshot) bool { _, ok := s.Gateways["gw-1"]; return ok })

	gw := snap.Gateways["gw-1"]
	node1 := nodes(snap)["node-1"]
	for _, inst := range []discovery.Instance{gw, node1, nodes(snap)["node-2"]} {
		if !inst.TLS || !strings.HasPrefix(inst.URL(), "https://") {
			t.Fatalf("instance %s registered as %+v: want TLS", inst.ID, inst)
		}
	}
	clientTLS := []string{"--tls-ca", ca.File, "--tls-cert", cli.Cert, "--tls-key", cli.Key}

	// Through the gateway over every protocol: the gateway calls the
	// owner of each key over mutual TLS.
	var keys []string
	for _, protocol := range []string{"connect", "grpc", "grpcweb"} {
		for i := range 8 {
			key := fmt.Sprintf("tls/%s/%d", protocol, i)
			keys = append(keys, key)
			args := append([]string{"put", key, "v-" + key, "--endpoint", gw.URL(), "--protocol", protocol}, clientTLS...)
			if got := flux("", args...); got.code != 0 {
				t.Fatalf("put %s through the gateway over %s: %+v", key, protocol, got)
			}
		}
	}
	// Straight to node-1: the keys node-2 owns are forwarded to it, over
	// mutual TLS with node-1's peer certificate.
	for _, key := range keys {
		args := append([]string{"get", key, "--endpoint", node1.URL(), "--protocol", "grpc"}, clientTLS...)
		if got := flux("", args...); got.code != 0 || got.stdout != "v-"+key+"\n" {
			t.Fatalf("get %s from node-1: %+v", key, got)
		}
	}
	// The SDK finds the nodes in etcd and dials each owner over TLS.
	for _, key := range keys {
		args := append(append([]string{"get", key, "--protocol", "grpc"}, etcdFlags(cli)...), clientTLS...)
		if got := flux("", args...); got.code != 0 || got.stdout != "v-"+key+"\n" {
			t.Fatalf("get %s through the SDK: %+v", key, got)
		}
	}
	// cluster status reads etcd, every node's statistics and the gateway's
	// admin port, all over TLS; both nodes hold some of the keys.
	got := flux("", append(append([]string{"cluster", "status", "--json"}, etcdFlags(cli)...), clientTLS...)...)
	// (TestClusterCommands holds the JSON to its documented shape.)
	var status clusterStatusJSON
	if err := json.Unmarshal([]byte(got.stdout), &status); err != nil || got.code != 0 {
		t.Fatalf("cluster status over TLS: %v\n%+v", err, got)
	}
	var total int64
	for _, m := range status.Members {
		if m.Keys == nil || *m.Keys == 0 {
			t.Errorf("cluster status over TLS: member %s holds %v keys, want some", m.ID, m.Keys)
			continue
		}
		total += *m.Keys
	}
	if total != int64(len(keys)) {
		t.Errorf("cluster status over TLS: the nodes hold %d keys, want %d", total, len(keys))
	}
	if len(status.Gateways) != 1 || status.Gateways[0].Error != "" || len(status.Gateways[0].Breakers) != 2 {
		t.Errorf("cluster status over TLS: gateways %+v, want gw-1 with a closed circuit per node", status.Gateways)
	}

	// Connect's JSON over HTTP/1.1, as curl or a browser would send it.
	var http1 http.Protocols
	http1.SetHTTP1(true)
	h1 := &http.Client{Transport: &http.Transport{Protocols: &http1, TLSClientConfig: &tls.Config{
		RootCAs: ca.Pool(), Certificates: []tls.Certificate{cli.TLS},
	}}}
	defer h1.CloseIdleConnections()
	resp, err := h1.Post(gw.URL()+kvv1connect.KVServiceGetProcedure, "application/json", strings.NewReader(`{"key":"tls/grpc/1"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Proto != "HTTP/1.1" || !strings.Contains(string(body), `"value":"di10bHMvZ3JwYy8x"`) {
		t.Errorf("Connect JSON over HTTP/1.1 and TLS: %s %s %s", resp.Proto, resp.Status, body)
	}

	// Refused: no client certificate, one from another CA, a client that
	// does not trust the servers' CA, cleartext. (Under TLS 1.3 a client
	// learns that the server refused its certificate only after sending its
	// request, so the first two fail with whatever cut the request short.)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no client certificate", []string{"--tls-ca", ca.File}, ""},
		{"certificate of another CA", []string{"--tls-ca", ca.File, "--tls-cert", rogue.Cert, "--tls-key", rogue.Key}, ""},
		{"servers' CA not trusted", []string{"--tls-cert", cli.Cert, "--tls-key", cli.Key}, "certificate signed by unknown authority"},
	} {
		for _, endpoint := range []string{gw.URL(), node1.URL()} {
			args := append([]string{"get", "tls/grpc/1", "--endpoint", endpoint, "--protocol", "grpc"}, tt.args...)
			if got := flux("", args...); got.code == 0 || !strings.Contains(got.stderr, tt.want) {
				t.Errorf("%s, %s: %+v; want a failure mentioning %q", tt.name, endpoint, got, tt.want)
			}
		}
	}
	for _, addr := range []string{gw.Address, node1.Address} {
		if got := flux("", "get", "tls/grpc/1", "--endpoint", "http://"+addr, "--protocol", "grpc"); got.code == 0 {
			t.Errorf("cleartext gRPC to %s: %+v", addr, got)
		}
	}
	// The admin ports serve TLS too, and want a client certificate.
	if resp, err := h1.Get("http://" + gw.AdminAddress + "/metrics"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("cleartext GET of the gateway's /metrics: %s, want 400 (an HTTP request to an HTTPS server)", resp.Status)
		}
	}
	resp, err = h1.Get(gw.AdminURL() + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s/healthz over TLS: %v %v", gw.AdminURL(), resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
}
