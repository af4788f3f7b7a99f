package kvnode_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"connectrpc.com/connect"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/clock"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newFakeClock() *clock.Fake {
	return clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

// startNode runs a node on random loopback ports for the duration of the
// test.
func startNode(t *testing.T, cfg kvnode.Config) *kvnode.Node {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = "127.0.0.1:0"
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "test-node"
	}
	cfg.Logger = discardLogger()
	node, err := kvnode.New(cfg)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	if err := node.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := node.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return node
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

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

// protocols are the three wire protocols every API case runs over.
var protocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{"connect", nil},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	{"grpcweb", []connect.ClientOption{connect.WithGRPCWeb()}},
}

// forEachProtocol runs fn with a client of each protocol against one fresh
// node per protocol.
func forEachProtocol(t *testing.T, cfg kvnode.Config, fn func(t *testing.T, client kvv1connect.KVServiceClient, clock *clock.Fake)) {
	t.Helper()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			cfg := cfg
			cfg.Clock = clock.Now
			// The product's default: every case also exercises the log.
			cfg.AppendOnly = true
			node := startNode(t, cfg)
			client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL(), p.opts...)
			fn(t, client, clock)
		})
	}
}

func put(t *testing.T, client kvv1connect.KVServiceClient, req *kvv1.PutRequest) *kvv1.PutResponse {
	t.Helper()
	resp, err := client.Put(context.Background(), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("put %q: %v", req.GetKey(), err)
	}
	return resp.Msg
}

func get(t *testing.T, client kvv1connect.KVServiceClient, key string) *kvv1.GetResponse {
	t.Helper()
	resp, err := client.Get(context.Background(), connect.NewRequest(&kvv1.GetRequest{Key: key}))
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return resp.Msg
}

func wantCode(t *testing.T, err error, want connect.Code) *connect.Error {
	t.Helper()
	var connectErr *connect.Error
	if !errors.As(err, &connectErr) {
		t.Fatalf("got error %v, want a %v connect error", err, want)
	}
	if connectErr.Code() != want {
		t.Fatalf("got code %v (%v), want %v", connectErr.Code(), connectErr.Message(), want)
	}
	return connectErr
}

// detail returns the first error detail of type T.
func detail[T proto.Message](t *testing.T, err *connect.Error) T {
	t.Helper()
	for _, d := range err.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if m, ok := v.(T); ok {
			return m
		}
	}
	var zero T
	t.Fatalf("error %v has no %T detail", err, zero)
	return zero
}

func violatedFields(v *validatepb.Violations) []string {
	var fields []string
	for _, violation := range v.GetViolations() {
		var path []string
		for _, e := range violation.GetField().GetElements() {
			path = append(path, e.GetFieldName())
		}
		fields = append(fields, strings.Join(path, "."))
	}
	return fields
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		first := put(t, client, &kvv1.PutRequest{Key: "greeting", Value: []byte("hello")})
		got := get(t, client, "greeting")
		if !got.GetFound() || string(got.GetValue()) != "hello" || got.GetRevision() != first.GetRevision() {
			t.Fatalf("get after put: got %v, want hello at revision %d", got, first.GetRevision())
		}
		if got.GetTtl() != nil || got.GetExpireTime() != nil {
			t.Errorf("key without TTL reports ttl %v, expire %v", got.GetTtl(), got.GetExpireTime())
		}
		second := put(t, client, &kvv1.PutRequest{Key: "greeting", Value: []byte("bonjour"), ReturnPrevious: true})
		if second.GetRevision() <= first.GetRevision() {
			t.Errorf("revision went from %d to %d, want it to increase", first.GetRevision(), second.GetRevision())
		}
		if p := second.GetPrevious(); string(p.GetValue()) != "hello" || p.GetRevision() != first.GetRevision() {
			t.Errorf("previous: got %v, want hello at revision %d", p, first.GetRevision())
		}
		del, err := client.Delete(context.Background(), connect.NewRequest(&kvv1.DeleteRequest{Key: "greeting", ReturnPrevious: true}))
		if err != nil {
			t.Fatalf("delete: %v", err)
		}
		if !del.Msg.GetFound() || del.Msg.GetRevision() <= second.GetRevision() || string(del.Msg.GetPrevious().GetValue()) != "bonjour" {
			t.Errorf("delete: got %v, want found with a new revision and previous bonjour", del.Msg)
		}
		if got := get(t, client, "greeting"); got.GetFound() {
			t.Errorf("get after delete: got %v, want not found", got)
		}
	})
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		if got := get(t, client, "missing"); got.GetFound() || got.GetValue() != nil || got.GetRevision() != 0 {
			t.Errorf("get missing: got %v, want empty not-found response", got)
		}
		del, err := client.Delete(context.Background(), connect.NewRequest(&kvv1.DeleteRequest{Key: "missing"}))
		if err != nil {
			t.Fatalf("delete missing: %v", err)
		}
		if del.Msg.GetFound() {
			t.Errorf("delete missing: got found, want not found")
		}
	})
}

func TestConditions(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		ctx := context.Background()
		_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: "k", Value: []byte("v"), Condition: &kvv1.PutRequest_IfPresent{IfPresent: true}}))
		if cf := detail[*kvv1.ConditionFailure](t, wantCode(t, err, connect.CodeFailedPrecondition)); cf.GetFound() {
			t.Errorf("if_present on missing key: detail %v, want found false", cf)
		}
		created := put(t, client, &kvv1.PutRequest{Key: "k", Value: []byte("v1"), Condition: &kvv1.PutRequest_IfAbsent{IfAbsent: true}})

		_, err = client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: "k", Value: []byte("v2"), Condition: &kvv1.PutRequest_IfAbsent{IfAbsent: true}}))
		cf := detail[*kvv1.ConditionFailure](t, wantCode(t, err, connect.CodeFailedPrecondition))
		if !cf.GetFound() || cf.GetRevision() != created.GetRevision() {
			t.Errorf("if_absent on existing key: detail %v, want found at revision %d", cf, created.GetRevision())
		}
		_, err = client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: "k", Value: []byte("v2"), Condition: &kvv1.PutRequest_IfRevision{IfRevision: created.GetRevision() + 100}}))
		wantCode(t, err, connect.CodeFailedPrecondition)

		swapped := put(t, client, &kvv1.PutRequest{Key: "k", Value: []byte("v2"), Condition: &kvv1.PutRequest_IfRevision{IfRevision: created.GetRevision()}})
		put(t, client, &kvv1.PutRequest{Key: "k", Value: []byte("v3"), Condition: &kvv1.PutRequest_IfPresent{IfPresent: true}})
		if got := get(t, client, "k"); string(got.GetValue()) != "v3" {
			t.Errorf("after conditional puts: got %q, want v3", got.GetValue())
		}

		_, err = client.Delete(ctx, connect.NewRequest(&kvv1.DeleteRequest{Key: "k", Condition: &kvv1.DeleteRequest_IfRevision{IfRevision: swapped.GetRevision()}}))
		wantCode(t, err, connect.CodeFailedPrecondition)
		if got := get(t, client, "k"); !got.GetFound() {
			t.Fatalf("failed conditional delete removed the key")
		}
		_, err = client.Delete(ctx, connect.NewRequest(&kvv1.DeleteRequest{Key: "absent", Condition: &kvv1.DeleteRequest_IfPresent{IfPresent: true}}))
		wantCode(t, err, connect.CodeFailedPrecondition)
	})
}

func TestTTL(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, clock *clock.Fake) {
		put(t, client, &kvv1.PutRequest{Key: "session", Value: []byte("s"), Ttl: durationpb.New(30 * time.Second)})
		clock.Advance(10 * time.Second)
		got := get(t, client, "session")
		if !got.GetFound() || got.GetTtl().AsDuration() != 20*time.Second {
			t.Fatalf("10s into a 30s TTL: got %v, want found with 20s left", got)
		}
		if want := clock.Now().Add(20 * time.Second); !got.GetExpireTime().AsTime().Equal(want) {
			t.Errorf("expire_time: got %v, want %v", got.GetExpireTime().AsTime(), want)
		}

		// keep_ttl keeps the expiry; a plain put clears it.
		put(t, client, &kvv1.PutRequest{Key: "session", Value: []byte("s2"), KeepTtl: true})
		if got := get(t, client, "session"); got.GetTtl().AsDuration() != 20*time.Second || string(got.GetValue()) != "s2" {
			t.Errorf("after keep_ttl put: got %v, want s2 with 20s left", got)
		}
		clock.Advance(20 * time.Second)
		if got := get(t, client, "session"); got.GetFound() {
			t.Errorf("at expiry: got %v, want not found", got)
		}

		put(t, client, &kvv1.PutRequest{Key: "cleared", Value: []byte("c"), Ttl: durationpb.New(time.Second)})
		put(t, client, &kvv1.PutRequest{Key: "cleared", Value: []byte("c")})
		clock.Advance(time.Hour)
		if got := get(t, client, "cleared"); !got.GetFound() || got.GetTtl() != nil {
			t.Errorf("put without ttl should clear the TTL: got %v", got)
		}
	})
}

func TestValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		call   func(kvv1connect.KVServiceClient) error
		fields []string
	}{
		{"empty key", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Get(context.Background(), connect.NewRequest(&kvv1.GetRequest{}))
			return err
		}, []string{"key"}},
		{"key too long", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: strings.Repeat("k", 1025)}))
			return err
		}, []string{"key"}},
		{"negative ttl", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: "k", Ttl: durationpb.New(-time.Second)}))
			return err
		}, []string{"ttl"}},
		{"if_revision zero", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: "k", Condition: &kvv1.PutRequest_IfRevision{}}))
			return err
		}, []string{"if_revision"}},
		{"ttl with keep_ttl", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: "k", Ttl: durationpb.New(time.Second), KeepTtl: true}))
			return err
		}, []string{""}},
		{"scan limit", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Scan(context.Background(), connect.NewRequest(&kvv1.ScanRequest{Limit: 10001}))
			return err
		}, []string{"limit"}},
		{"empty batch", func(c kvv1connect.KVServiceClient) error {
			_, err := c.Batch(context.Background(), connect.NewRequest(&kvv1.BatchRequest{}))
			return err
		}, []string{"operations"}},
	}
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		for i, tt := range tests {
			err := tt.call(client)
			connectErr := wantCode(t, err, connect.CodeInvalidArgument)
			got := violatedFields(detail[*validatepb.Violations](t, connectErr))
			if strings.Join(got, ",") != strings.Join(tt.fields, ",") {
				t.Errorf("#%d %s: got violations on %q, want %q", i, tt.name, got, tt.fields)
			}
		}
		if got := get(t, client, "k"); got.GetFound() {
			t.Errorf("an invalid put wrote the key: %v", got)
		}
	})
}

func TestOversizeValue(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, kvnode.Config{MaxValueBytes: 1024}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		ctx := context.Background()
		put(t, client, &kvv1.PutRequest{Key: "fits", Value: bytes.Repeat([]byte("x"), 1024)})

		_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: "big", Value: bytes.Repeat([]byte("x"), 1025)}))
		connectErr := wantCode(t, err, connect.CodeInvalidArgument)
		if got := violatedFields(detail[*validatepb.Violations](t, connectErr)); len(got) != 1 || got[0] != "value" {
			t.Errorf("value over the limit: violations on %q, want [value]", got)
		}
		// Far over the message limit: refused before it is decoded.
		_, err = client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: "huge", Value: bytes.Repeat([]byte("x"), 8<<20)}))
		wantCode(t, err, connect.CodeResourceExhausted)

		if got := get(t, client, "fits"); !got.GetFound() {
			t.Errorf("node lost data or stopped serving after oversize requests")
		}
		for _, key := range []string{"big", "huge"} {
			if got := get(t, client, key); got.GetFound() {
				t.Errorf("oversize put of %q was written", key)
			}
		}
	})
}

func TestBatch(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		putOp := func(k, v string) *kvv1.Operation {
			return &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: k, Value: []byte(v)}}}
		}
		getOp := func(k string) *kvv1.Operation {
			return &kvv1.Operation{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: k}}}
		}
		ops := []*kvv1.Operation{
			putOp("a", "1"),
			putOp("", "bad key"),
			getOp("a"),
			{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: "a", Value: []byte("2"), Condition: &kvv1.PutRequest_IfAbsent{IfAbsent: true}}}},
			{}, // no operation at all
			{Op: &kvv1.Operation_Delete{Delete: &kvv1.DeleteRequest{Key: "a"}}},
			getOp("a"),
		}
		resp, err := client.Batch(context.Background(), connect.NewRequest(&kvv1.BatchRequest{Operations: ops}))
		if err != nil {
			t.Fatalf("batch: %v", err)
		}
		results := resp.Msg.GetResults()
		if len(results) != len(ops) {
			t.Fatalf("got %d results for %d operations", len(results), len(ops))
		}
		if results[0].GetPut().GetRevision() == 0 {
			t.Errorf("#0 put: got %v", results[0])
		}
		if e := results[1].GetError(); e.GetCode() != "invalid_argument" || strings.Join(violatedFields(e.GetViolations()), ",") != "put.key" {
			t.Errorf("#1 bad key: got %v, want invalid_argument on put.key", results[1])
		}
		if g := results[2].GetGet(); !g.GetFound() || string(g.GetValue()) != "1" {
			t.Errorf("#2 get: got %v, want 1", results[2])
		}
		if e := results[3].GetError(); e.GetCode() != "failed_precondition" || !e.GetConditionFailure().GetFound() {
			t.Errorf("#3 if_absent: got %v, want failed_precondition with found key", results[3])
		}
		if e := results[4].GetError(); e.GetCode() != "invalid_argument" {
			t.Errorf("#4 empty op: got %v, want invalid_argument", results[4])
		}
		if d := results[5].GetDelete(); !d.GetFound() {
			t.Errorf("#5 delete: got %v, want found", results[5])
		}
		if g := results[6].GetGet(); g.GetFound() {
			t.Errorf("#6 get after delete: got %v, want not found", results[6])
		}
	})
}

func TestScanPaging(t *testing.T) {
	t.Parallel()
	const keys = 1000
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		ctx := context.Background()
		for start := 0; start < keys; start += 500 {
			var ops []*kvv1.Operation
			for i := start; i < start+500; i++ {
				ops = append(ops, &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: fmt.Sprintf("user/%04d", i), Value: []byte(fmt.Sprint(i))}}})
			}
			if _, err := client.Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: ops})); err != nil {
				t.Fatalf("load: %v", err)
			}
		}
		put(t, client, &kvv1.PutRequest{Key: "other", Value: []byte("x")})

		var seen []string
		cursor, pages := "", 0
		for {
			resp, err := client.Scan(ctx, connect.NewRequest(&kvv1.ScanRequest{Prefix: "user/", Limit: 7, Cursor: cursor, KeysOnly: pages%2 == 1}))
			if err != nil {
				t.Fatalf("scan page %d: %v", pages, err)
			}
			pages++
			for _, item := range resp.Msg.GetItems() {
				keysOnly := pages%2 == 0
				var n int
				if _, err := fmt.Sscanf(item.GetKey(), "user/%d", &n); err != nil {
					t.Fatalf("scan returned %q, outside the prefix", item.GetKey())
				}
				if want := fmt.Sprint(n); !keysOnly && string(item.GetValue()) != want {
					t.Fatalf("value of %s: got %q, want %q", item.GetKey(), item.GetValue(), want)
				}
				if keysOnly && item.GetValue() != nil {
					t.Fatalf("keys_only page returned a value for %s", item.GetKey())
				}
				seen = append(seen, item.GetKey())
			}
			if cursor = resp.Msg.GetNextCursor(); cursor == "" {
				break
			}
			if len(resp.Msg.GetItems()) != 7 {
				t.Fatalf("page %d has %d items but a next cursor", pages, len(resp.Msg.GetItems()))
			}
		}
		if len(seen) != keys {
			t.Fatalf("scan returned %d keys over %d pages, want %d", len(seen), pages, keys)
		}
		for i, k := range seen {
			if want := fmt.Sprintf("user/%04d", i); k != want {
				t.Fatalf("#%d: got %s, want %s", i, k, want)
			}
		}

		_, err := client.Scan(ctx, connect.NewRequest(&kvv1.ScanRequest{Prefix: "user/", Cursor: "not-a-cursor"}))
		wantCode(t, err, connect.CodeInvalidArgument)
	})
}

func TestPipeline(t *testing.T) {
	t.Parallel()
	const ops = 10_000
	forEachProtocol(t, kvnode.Config{}, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stream := client.Pipeline(ctx)
		var sendErr atomic.Value
		go func() {
			defer func() { _ = stream.CloseRequest() }()
			for id := range uint64(ops) {
				op := &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: fmt.Sprintf("p/%d", id), Value: []byte("v")}}}
				if id%1000 == 999 {
					op = &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: ""}}}
				}
				if err := stream.Send(&kvv1.PipelineRequest{Id: id, Operation: op}); err != nil {
					sendErr.Store(err)
					return
				}
			}
		}()
		answered := make(map[uint64]bool, ops)
		failed := 0
		for {
			resp, err := stream.Receive()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("receive after %d responses: %v", len(answered), err)
			}
			if answered[resp.GetId()] {
				t.Fatalf("id %d answered twice", resp.GetId())
			}
			answered[resp.GetId()] = true
			if e := resp.GetResult().GetError(); e != nil {
				if resp.GetId()%1000 != 999 || e.GetCode() != "invalid_argument" {
					t.Fatalf("id %d: unexpected error %v", resp.GetId(), e)
				}
				failed++
			} else if resp.GetResult().GetPut().GetRevision() == 0 {
				t.Fatalf("id %d: got %v, want a put result", resp.GetId(), resp.GetResult())
			}
		}
		if err := stream.CloseResponse(); err != nil {
			t.Errorf("close response: %v", err)
		}
		if err, ok := sendErr.Load().(error); ok {
			t.Fatalf("send: %v", err)
		}
		if len(answered) != ops || failed != ops/1000 {
			t.Fatalf("got %d answers with %d failures, want %d with %d", len(answered), failed, ops, ops/1000)
		}
		if got := get(t, client, "p/9998"); !got.GetFound() {
			t.Errorf("pipelined put not visible to Get")
		}
	})
}
