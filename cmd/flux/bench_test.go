package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/internal/bench"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// benchArgs are small runs: a few hundred requests, no warmup.
var benchArgs = []string{"bench", "--requests", "200", "--warmup", "0s", "--keys", "500", "--concurrency", "4", "--batch", "8", "--depth", "4", "--json"}

// runBench runs flux bench with args and returns its summary, failing the
// test unless every one of the 200 requests succeeded with the operations
// the workload implies: one each, 8 per Batch call. A pipeline request is
// one operation, on Redis as on Flux-KV.
func runBench(t *testing.T, workload string, args ...string) bench.Summary {
	t.Helper()
	got := flux("", append(append(append([]string{}, benchArgs...), "--workload", workload), args...)...)
	if got.code != 0 {
		t.Fatalf("flux bench --workload %s %q: exit %d, stderr %q", workload, args, got.code, got.stderr)
	}
	var sum bench.Summary
	if err := json.Unmarshal([]byte(got.stdout), &sum); err != nil {
		t.Fatalf("flux bench printed %q: %v", got.stdout, err)
	}
	wantOps := int64(200)
	if workload == "batch" {
		wantOps = 200 * 8
	}
	if sum.Requests != 200 || sum.Ops != wantOps || len(sum.Errors) != 0 {
		t.Errorf("--workload %s %q: %d requests, %d ops, errors %v; want 200, %d, none", workload, args, sum.Requests, sum.Ops, sum.Errors, wantOps)
	}
	if sum.Workload != workload || sum.Concurrency != 4 || sum.Keys != 500 || sum.LatencyUS.P50 <= 0 || sum.LatencyUS.Max < sum.LatencyUS.P99 {
		t.Errorf("--workload %s %q: summary %+v", workload, args, sum)
	}
	return sum
}

func TestBenchWorkloadsAndProtocols(t *testing.T) {
	t.Parallel()
	endpoint := startNode(t)
	for _, protocol := range []string{"grpc", "connect", "grpcweb"} {
		for _, workload := range bench.Workloads {
			t.Run(protocol+"/"+string(workload), func(t *testing.T) {
				t.Parallel()
				sum := runBench(t, string(workload), "--endpoint", endpoint, "--protocol", protocol, "--connections", "2")
				if sum.Target != "flux" || sum.Protocol != protocol || sum.Endpoint != endpoint || sum.Connections != 2 {
					t.Errorf("summary names %s %s %s over %d connections", sum.Target, sum.Endpoint, sum.Protocol, sum.Connections)
				}
			})
		}
	}
}

func TestBenchReadRatio(t *testing.T) {
	t.Parallel()
	endpoint := startNode(t)
	tests := []struct {
		args []string
		want float64
	}{
		{[]string{"--workload", "get"}, 1},
		{[]string{"--workload", "put"}, 0},
		{[]string{"--workload", "mixed"}, 0.9},
		{[]string{"--workload", "batch"}, 1},
		{[]string{"--workload", "pipeline", "--read-ratio", "0.5"}, 0.5},
	}
	for i, tt := range tests {
		got := flux("", append([]string{"bench", "--endpoint", endpoint, "--requests", "10", "--warmup", "0s", "--keys", "10", "--concurrency", "1", "--json"}, tt.args...)...)
		var sum bench.Summary
		if err := json.Unmarshal([]byte(got.stdout), &sum); err != nil || got.code != 0 {
			t.Fatalf("#%d flux bench %q: exit %d, %v, stderr %q", i, tt.args, got.code, err, got.stderr)
		}
		if sum.ReadRatio != tt.want {
			t.Errorf("#%d flux bench %q: read_ratio %g, want %g", i, tt.args, sum.ReadRatio, tt.want)
		}
	}
}

func TestBenchText(t *testing.T) {
	t.Parallel()
	got := flux("", "bench", "--endpoint", startNode(t), "--requests", "50", "--warmup", "0s", "--keys", "100", "--concurrency", "2", "--workload", "mixed")
	for _, want := range []string{"mixed against flux http://", "(grpc)", "requests      50 (", "p99.9", "errors        none", "90% gets, 10% puts"} {
		if !strings.Contains(got.stdout, want) {
			t.Errorf("flux bench output lacks %q:\n%s", want, got.stdout)
		}
	}
	if got.code != 0 || got.stderr != "" {
		t.Errorf("flux bench: exit %d, stderr %q (no progress line off a terminal)", got.code, got.stderr)
	}
}

func TestBenchFailures(t *testing.T) {
	t.Parallel()
	dead := "http://127.0.0.1:1"
	tests := []struct {
		args       []string
		wantCode   int
		wantStderr string
	}{
		{[]string{"--workload", "scan"}, 2, "workload \"scan\""},
		{[]string{"--key-size", "3", "--keys", "1000"}, 2, "need at least 4 bytes"},
		{[]string{"--key-size", "1025"}, 2, "--key-size 1025: Flux-KV takes keys of at most 1024 bytes"},
		{[]string{"--concurrency", "201", "--connections", "2"}, 2, "101 workers per connection, over 100: raise --connections to at least 3"},
		{[]string{"--workload", "pipeline", "--concurrency", "101"}, 2, "raise --connections to at least 2"},
		{[]string{"--connections", "5", "--concurrency", "4"}, 2, "--connections 5"},
		{[]string{"--protocol", "http3"}, 2, "--protocol"},
		{[]string{"--etcd", "http://127.0.0.1:1", "--workload", "pipeline"}, 2, "no Pipeline"},
		{[]string{"--etcd", "http://127.0.0.1:1", "--protocol", "connect"}, 2, "grpc or grpcweb"},
		{[]string{"--redis", "127.0.0.1:1", "--etcd", "http://127.0.0.1:1"}, 2, "exclude each other"},
		{[]string{"--endpoint", "not a url"}, 2, "--endpoint"},
		{[]string{"extra"}, 2, "unexpected arguments"},
		// The preload cannot reach the endpoint.
		{[]string{"--endpoint", dead, "--requests", "10"}, 2, "preload: unavailable"},
	}
	for i, tt := range tests {
		got := flux("", append([]string{"bench"}, tt.args...)...)
		if got.code != tt.wantCode || !strings.Contains(got.stderr, tt.wantStderr) {
			t.Errorf("#%d flux bench %q: exit %d, stderr %q; want %d and %q", i, tt.args, got.code, got.stderr, tt.wantCode, tt.wantStderr)
		}
	}
	// Without the preload, every request fails: they are counted, the run
	// goes on, and the exit code says that nothing succeeded.
	for _, workload := range []string{"get", "pipeline"} {
		got := flux("", "bench", "--endpoint", dead, "--preload=false", "--requests", "20", "--warmup", "0s", "--concurrency", "2", "--workload", workload, "--json")
		var sum bench.Summary
		if err := json.Unmarshal([]byte(got.stdout), &sum); err != nil {
			t.Fatalf("%s: flux bench printed %q: %v", workload, got.stdout, err)
		}
		if got.code != 2 || sum.Requests != 0 || sum.Errors["Unavailable"] != 20 || !strings.Contains(got.stderr, "no operation succeeded") {
			t.Errorf("%s against a dead endpoint: exit %d, requests %d, errors %v, stderr %q", workload, got.code, sum.Requests, sum.Errors, got.stderr)
		}
	}
}

// TestBenchEnvFallback cannot run in parallel: it sets the process
// environment.
func TestBenchEnvFallback(t *testing.T) {
	t.Setenv("FLUX_WORKLOAD", "bogus")
	if got := flux("", "bench"); got.code != 2 || !strings.Contains(got.stderr, `workload "bogus"`) {
		t.Errorf("FLUX_WORKLOAD was not used: %+v", got)
	}
}

// TestBenchCluster drives a two-node cluster through the SDK, without a
// gateway.
func TestBenchCluster(t *testing.T) {
	t.Parallel()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	for i := range 2 {
		node, err := kvnode.New(kvnode.Config{
			NodeID: fmt.Sprintf("node-%d", i+1), Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0",
			DataDir: t.TempDir(), Etcd: []string{etcd.ClientURL()},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := node.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = node.Shutdown(context.Background()) })
	}
	for _, workload := range []string{"get", "put", "mixed", "batch"} {
		for _, protocol := range []string{"grpc", "grpcweb"} {
			sum := runBench(t, workload, "--etcd", etcd.ClientURL(), "--protocol", protocol, "--connections", "2")
			if sum.Endpoint != "etcd:"+etcd.ClientURL() || sum.Protocol != protocol {
				t.Errorf("summary names %s %s", sum.Endpoint, sum.Protocol)
			}
		}
	}
}

// redisAddr is the Redis server the Redis tests use.
const redisAddr = "127.0.0.1:6379"

// TestBenchRedis runs every workload against a real Redis, in database 15.
// Without a Redis it skips, except in CI (CI set), where it fails.
func TestBenchRedis(t *testing.T) {
	t.Parallel()
	conn, err := net.DialTimeout("tcp", redisAddr, 2*time.Second)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI has no Redis at %s: %v", redisAddr, err)
		}
		t.Skipf("no Redis at %s: %v", redisAddr, err)
	}
	_ = conn.Close()
	for _, workload := range bench.Workloads {
		t.Run(string(workload), func(t *testing.T) {
			t.Parallel()
			sum := runBench(t, string(workload), "--redis", redisAddr, "--redis-db", "15", "--read-ratio", "0.5")
			if sum.Target != "redis" || sum.Protocol != "resp" || sum.Endpoint != redisAddr || sum.Connections != 4 {
				t.Errorf("summary names %s %s %s over %d connections", sum.Target, sum.Endpoint, sum.Protocol, sum.Connections)
			}
		})
	}
	// A Redis pipeline of 16 commands is 16 requests: a count that is
	// not a multiple of the depth still measures exactly that many.
	t.Run("pipeline-requests", func(t *testing.T) {
		t.Parallel()
		got := flux("", "bench", "--redis", redisAddr, "--redis-db", "15", "--workload", "pipeline", "--depth", "16",
			"--requests", "100", "--concurrency", "3", "--keys", "500", "--warmup", "0s", "--json")
		var sum bench.Summary
		if err := json.Unmarshal([]byte(got.stdout), &sum); err != nil || got.code != 0 {
			t.Fatalf("exit %d, %v, stderr %q", got.code, err, got.stderr)
		}
		if sum.Requests != 100 || sum.Ops != 100 || len(sum.Errors) != 0 {
			t.Errorf("--requests 100 --depth 16: %d requests, %d ops, errors %v; want 100, 100, none", sum.Requests, sum.Ops, sum.Errors)
		}
	})
}

// TestBenchRedisForeignKeys: flux bench does not write into a Redis
// database that holds keys it did not write, unless told to. It uses
// database 14, and skips if that holds keys.
func TestBenchRedisForeignKeys(t *testing.T) {
	t.Parallel()
	const db = 14
	c := redis.NewClient(&redis.Options{Addr: redisAddr, DB: db, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	n, err := c.DBSize(ctx).Result()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI has no Redis at %s: %v", redisAddr, err)
		}
		t.Skipf("no Redis at %s: %v", redisAddr, err)
	}
	if n > 0 {
		t.Skipf("redis database %d holds %d keys: not the test's to overwrite", db, n)
	}
	// The database was empty: what the test writes is all there is.
	t.Cleanup(func() { _ = c.FlushDB(context.Background()).Err() })
	args := []string{"bench", "--redis", redisAddr, "--redis-db", strconv.Itoa(db), "--requests", "20", "--warmup", "0s", "--keys", "50", "--concurrency", "2", "--json"}

	// Only keys of the bench's own: it runs.
	if got := flux("", args...); got.code != 0 {
		t.Fatalf("into a database of bench keys: exit %d, stderr %q", got.code, got.stderr)
	}
	if err := c.Set(ctx, "user:1", "precious", 0).Err(); err != nil {
		t.Fatal(err)
	}
	got := flux("", args...)
	if got.code != 2 || !strings.Contains(got.stderr, `"user:1"`) || !strings.Contains(got.stderr, "--redis-overwrite") {
		t.Errorf("into a database holding user:1: exit %d, stderr %q; want 2 and a pointer to --redis-overwrite", got.code, got.stderr)
	}
	// A run that writes nothing is harmless.
	if got := flux("", append(args, "--workload", "get", "--preload=false")...); got.code != 0 {
		t.Errorf("gets without preload: exit %d, stderr %q", got.code, got.stderr)
	}
	if got := flux("", append(args, "--redis-overwrite")...); got.code != 0 {
		t.Errorf("with --redis-overwrite: exit %d, stderr %q", got.code, got.stderr)
	}
	if v, err := c.Get(ctx, "user:1").Result(); err != nil || v != "precious" {
		t.Errorf("user:1 is %q, %v after the runs", v, err)
	}
}

// failingBatches is a KVService whose Batch calls succeed while every
// operation in them fails.
type failingBatches struct {
	kvv1connect.UnimplementedKVServiceHandler
}

func (failingBatches) Batch(_ context.Context, req *connect.Request[kvv1.BatchRequest]) (*connect.Response[kvv1.BatchResponse], error) {
	resp := &kvv1.BatchResponse{}
	for range req.Msg.GetOperations() {
		resp.Results = append(resp.Results, &kvv1.OperationResult{Result: &kvv1.OperationResult_Error{
			Error: &kvv1.OperationError{Code: "unavailable", Message: "down"},
		}})
	}
	return connect.NewResponse(resp), nil
}

// TestBenchBatchAllFailed: Batch calls that answer but fail every
// operation are not successful requests, and a run of only those exits 2.
func TestBenchBatchAllFailed(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.Handle(kvv1connect.NewKVServiceHandler(failingBatches{}))
	srv := httptest.NewUnstartedServer(mux)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &protocols
	srv.Start()
	t.Cleanup(srv.Close)
	got := flux("", "bench", "--endpoint", srv.URL, "--protocol", "connect", "--workload", "batch", "--batch", "4", "--preload=false",
		"--requests", "10", "--warmup", "0s", "--concurrency", "2", "--json")
	var sum bench.Summary
	if err := json.Unmarshal([]byte(got.stdout), &sum); err != nil {
		t.Fatalf("flux bench printed %q: %v (stderr %q)", got.stdout, err, got.stderr)
	}
	if got.code != 2 || sum.Requests != 0 || sum.Ops != 0 || sum.Errors["Unavailable"] != 40 || sum.LatencyUS.Max != 0 {
		t.Errorf("exit %d, %d requests, %d ops, errors %v, latency %+v; want 2, 0, 0, 40 Unavailable, none timed",
			got.code, sum.Requests, sum.Ops, sum.Errors, sum.LatencyUS)
	}
}
