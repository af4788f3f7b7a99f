package kvnode_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/clock"
	"github.com/fluxkv/fluxkv/platform/rpcserver"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// The abuse tests that measure the heap measure the whole test process, so
// they do not run in parallel with each other or with other tests (parallel
// tests wait until the sequential ones are done): the node under attack is
// then the main thing that allocates.

// heapSlack is how much the heap may grow under an attack before the node
// is deemed to be holding what the attacker sent.
const heapSlack = 64 << 20

// abuseTimeout bounds each abuse test.
const abuseTimeout = 2 * time.Minute

// memStats reads the memory statistics after two collections (the second
// frees what sync.Pools kept through the first).
func memStats() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

func heapInuse() uint64 { return memStats().HeapInuse }

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// checkHeap fails the test when the heap has grown more than heapSlack
// since base.
func checkHeap(t *testing.T, what string, base uint64) uint64 {
	t.Helper()
	return checkHeapWithin(t, what, base, heapSlack)
}

func checkHeapWithin(t *testing.T, what string, base, slack uint64) uint64 {
	t.Helper()
	now := heapInuse()
	t.Logf("heap %s: %s (%+.1f MiB)", what, mib(now), (float64(now)-float64(base))/(1<<20))
	if now > base+slack {
		t.Errorf("heap %s: %s, more than %s over the %s before", what, mib(now), mib(slack), mib(base))
	}
	return now
}

func abuseContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), abuseTimeout)
	t.Cleanup(cancel)
	return ctx
}

// stillServes fails the test unless a well-behaved client can write and
// read a key.
func stillServes(t *testing.T, node *kvnode.Node) {
	t.Helper()
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL(), connect.WithGRPC())
	key := fmt.Sprintf("still-serving-%d", time.Now().UnixNano())
	put(t, client, &kvv1.PutRequest{Key: key, Value: []byte("yes")})
	if got := get(t, client, key); string(got.GetValue()) != "yes" {
		t.Fatalf("get %s: got %q, want yes", key, got.GetValue())
	}
}

// violation returns the single violation of err's Violations detail.
func violation(t *testing.T, err *connect.Error) *validatepb.Violation {
	t.Helper()
	v := detail[*validatepb.Violations](t, err).GetViolations()
	if len(v) != 1 {
		t.Fatalf("error %v: got %d violations, want 1", err, len(v))
	}
	return v[0]
}

func TestAbuseOversizeRequests(t *testing.T) {
	t.Parallel()
	cfg := kvnode.Config{
		MaxValueBytes: 1024,
		Limits:        kvnode.Limits{MaxKeyBytes: 64, MaxBatchOperations: 10},
	}
	longKey := strings.Repeat("k", 65)
	putOp := func(key string) *kvv1.Operation {
		return &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: key, Value: []byte("v")}}}
	}
	forEachProtocol(t, cfg, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		ctx := abuseContext(t)
		tests := []struct {
			name string
			call func() error
			code connect.Code
			rule string // of the violation, when the node's limit refused it
		}{
			{"put key over the node's limit", func() error {
				_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: longKey, Value: []byte("v")}))
				return err
			}, connect.CodeInvalidArgument, "flux.max_key_bytes"},
			{"get key over the node's limit", func() error {
				_, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: longKey}))
				return err
			}, connect.CodeInvalidArgument, "flux.max_key_bytes"},
			{"delete key over the node's limit", func() error {
				_, err := client.Delete(ctx, connect.NewRequest(&kvv1.DeleteRequest{Key: longKey}))
				return err
			}, connect.CodeInvalidArgument, "flux.max_key_bytes"},
			{"watch key over the node's limit", func() error {
				stream, err := client.Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Key{Key: longKey}}))
				if err != nil {
					return err
				}
				defer stream.Close()
				for stream.Receive() {
				}
				return stream.Err()
			}, connect.CodeInvalidArgument, "flux.max_key_bytes"},
			{"key over the schema's bound", func() error {
				_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: strings.Repeat("k", 1025), Value: []byte("v")}))
				return err
			}, connect.CodeInvalidArgument, "string.max_bytes"},
			{"key of 8 MiB, over the message limit", func() error {
				_, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: strings.Repeat("k", 8<<20)}))
				return err
			}, connect.CodeResourceExhausted, ""},
			{"value over the node's limit", func() error {
				_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: "v", Value: make([]byte, 1025)}))
				return err
			}, connect.CodeInvalidArgument, "flux.max_value_bytes"},
			{"value of 8 MiB, over the message limit", func() error {
				_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: "v", Value: make([]byte, 8<<20)}))
				return err
			}, connect.CodeResourceExhausted, ""},
			{"batch over the node's limit", func() error {
				ops := make([]*kvv1.Operation, 11)
				for i := range ops {
					ops[i] = putOp(fmt.Sprintf("b%d", i))
				}
				_, err := client.Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: ops}))
				return err
			}, connect.CodeInvalidArgument, "flux.max_batch_operations"},
			{"batch over the schema's bound", func() error {
				ops := make([]*kvv1.Operation, 1001)
				for i := range ops {
					ops[i] = putOp(fmt.Sprintf("b%d", i))
				}
				_, err := client.Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: ops}))
				return err
			}, connect.CodeInvalidArgument, "repeated.max_items"},
		}
		for i, tt := range tests {
			connectErr := wantCode(t, tt.call(), tt.code)
			if tt.rule == "" {
				continue
			}
			v := violation(t, connectErr)
			if v.GetRuleId() != tt.rule {
				t.Errorf("#%d %s: got rule %q (%v), want %q", i, tt.name, v.GetRuleId(), connectErr, tt.rule)
			}
			if flag := map[string]string{
				"flux.max_key_bytes":        "--max-key-bytes",
				"flux.max_batch_operations": "--max-batch-operations",
			}[tt.rule]; !strings.Contains(connectErr.Message(), flag) {
				t.Errorf("#%d %s: message %q does not name %s", i, tt.name, connectErr.Message(), flag)
			}
		}

		// In a Batch or a Pipeline, an operation over the limit fails alone.
		resp, err := client.Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: []*kvv1.Operation{putOp("ok-1"), putOp(longKey), putOp("ok-2")}}))
		if err != nil {
			t.Fatalf("batch with one long key: %v", err)
		}
		checkOverLimit := func(what string, results ...*kvv1.OperationResult) {
			t.Helper()
			if len(results) != 3 || results[0].GetPut() == nil || results[2].GetPut() == nil {
				t.Fatalf("%s: got %v, want the first and last operations applied", what, results)
			}
			e := results[1].GetError()
			if got := strings.Join(violatedFields(e.GetViolations()), ","); e.GetCode() != "invalid_argument" || got != "put.key" ||
				e.GetViolations().GetViolations()[0].GetRuleId() != "flux.max_key_bytes" || !strings.Contains(e.GetMessage(), "--max-key-bytes") {
				t.Errorf("%s: long key: got %v, want invalid_argument on put.key naming --max-key-bytes", what, e)
			}
		}
		checkOverLimit("batch", resp.Msg.GetResults()...)

		stream := client.Pipeline(ctx)
		for i, op := range []*kvv1.Operation{putOp("ok-3"), putOp(longKey), putOp("ok-4")} {
			if err := stream.Send(&kvv1.PipelineRequest{Id: uint64(i), Operation: op}); err != nil {
				t.Fatalf("pipeline send: %v", err)
			}
		}
		if err := stream.CloseRequest(); err != nil {
			t.Fatal(err)
		}
		var results []*kvv1.OperationResult
		for {
			resp, err := stream.Receive()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("pipeline receive: %v", err)
			}
			results = append(results, resp.GetResult())
		}
		_ = stream.CloseResponse()
		checkOverLimit("pipeline", results...)

		scan, err := client.Scan(ctx, connect.NewRequest(&kvv1.ScanRequest{Prefix: "k"}))
		if err != nil {
			t.Fatal(err)
		}
		if n := len(scan.Msg.GetItems()); n != 0 {
			t.Errorf("refused writes left %d keys", n)
		}
		put(t, client, &kvv1.PutRequest{Key: strings.Repeat("k", 64), Value: make([]byte, 1024)})
	})
}

// grpcEnvelope frames msg as one message of a gRPC, gRPC-Web or Connect
// stream.
func grpcEnvelope(msg proto.Message) []byte {
	data, err := proto.Marshal(msg)
	if err != nil {
		panic(err)
	}
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(data))), data...)
}

func TestAbuseHugeLengthPrefix(t *testing.T) {
	node := startNode(t, kvnode.Config{})
	ctx := abuseContext(t)
	client := h2cClient(t)
	const sent = 128 << 20 // bytes after the prefix, far over what the node would hold
	tests := []struct {
		procedure, contentType string
		status                 func(resp *http.Response, body []byte) bool // reports a resource_exhausted answer
	}{
		{kvv1connect.KVServicePutProcedure, "application/grpc", grpcStatus8},
		{kvv1connect.KVServicePutProcedure, "application/grpc-web+proto", grpcWebStatus8},
		{kvv1connect.KVServicePipelineProcedure, "application/grpc", grpcStatus8},
		{kvv1connect.KVServicePipelineProcedure, "application/grpc-web+proto", grpcWebStatus8},
		{kvv1connect.KVServicePipelineProcedure, "application/connect+proto", func(_ *http.Response, body []byte) bool {
			return bytes.Contains(body, []byte(`"resource_exhausted"`))
		}},
	}
	for i, tt := range tests {
		base := heapInuse()
		pr, pw := io.Pipe()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, node.APIURL()+tt.procedure, pr)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", tt.contentType)
		req.Header.Set("Te", "trailers")
		type result struct {
			resp *http.Response
			err  error
		}
		// A stream is answered only once its request ends.
		answered := make(chan result, 1)
		go func() {
			resp, err := client.Do(req)
			answered <- result{resp, err}
		}()
		// The envelope by hand: not compressed, 4 GiB - 1 long. A unary
		// call's body is cut off at the message limit, which ends the
		// writes; a stream's is read and dropped as it comes.
		_, err = pw.Write([]byte{0, 0xff, 0xff, 0xff, 0xff})
		chunk, written := make([]byte, 64<<10), 0
		for err == nil && written < sent {
			var n int
			n, err = pw.Write(chunk)
			written += n
		}
		t.Logf("#%d %s %s: the node took %s of the message (%v)", i, tt.procedure, tt.contentType, mib(uint64(written)), err)
		checkHeap(t, fmt.Sprintf("#%d with the message open", i), base)
		pw.Close()
		var r result
		select {
		case r = <-answered:
		case <-ctx.Done():
			t.Fatalf("#%d: no answer: %v", i, ctx.Err())
		}
		if r.err != nil {
			t.Fatalf("#%d %s %s: %v", i, tt.procedure, tt.contentType, r.err)
		}
		resp := r.resp
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("#%d: read response: %v", i, err)
		}
		if !tt.status(resp, body) {
			t.Errorf("#%d %s %s: got %s %v %v %q, want resource_exhausted", i, tt.procedure, tt.contentType, resp.Status, resp.Header, resp.Trailer, body)
		}
		checkHeap(t, fmt.Sprintf("#%d after the call", i), base)
	}
	stillServes(t, node)
}

func grpcStatus8(resp *http.Response, _ []byte) bool {
	return resp.Trailer.Get("Grpc-Status") == "8" || resp.Header.Get("Grpc-Status") == "8"
}

func grpcWebStatus8(resp *http.Response, body []byte) bool {
	return resp.Header.Get("Grpc-Status") == "8" || bytes.Contains(body, []byte("grpc-status: 8")) || bytes.Contains(body, []byte("grpc-status:8"))
}

// rawH2 is just enough of an HTTP/2 client to misbehave: it opens streams
// without regard to the server's limit on concurrent streams, and records
// what became of each. (golang.org/x/net/http2 would do it, but is not a
// direct dependency of the module.)
type rawH2 struct {
	conn      net.Conn
	authority string
	readDone  chan struct{}

	wmu sync.Mutex // guards w; never held by the reader, which writes nothing
	w   *bufio.Writer

	mu       sync.Mutex
	answered map[uint32]bool   // response headers came
	reset    map[uint32]uint32 // RST_STREAM before any response: its error code
	goAway   bool
	changed  chan struct{} // signalled, without blocking, on every change
}

// HTTP/2 frame types and flags (RFC 9113, section 6).
const (
	h2Data, h2Headers, h2RSTStream, h2Settings, h2GoAway, h2WindowUpdate = 0x0, 0x1, 0x3, 0x4, 0x7, 0x8
	h2EndStream, h2EndHeaders                                            = 0x1, 0x4
	h2Preface                                                            = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// dialH2 opens an h2c connection that lets the server send as much as it
// likes, and reads frames until the connection ends; the test's cleanup
// closes it. It acknowledges nothing the server sends (net/http neither
// requires it nor pings unasked), so that reading never waits for writing:
// the server stops reading while it cannot write.
func dialH2(t *testing.T, addr string) *rawH2 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &rawH2{
		conn: conn, authority: addr, readDone: make(chan struct{}), w: bufio.NewWriterSize(conn, 64<<10),
		answered: map[uint32]bool{}, reset: map[uint32]uint32{}, changed: make(chan struct{}, 1),
	}
	// Not c itself, which may then be dropped before the test ends.
	readDone := c.readDone
	t.Cleanup(func() {
		conn.Close()
		<-readDone
	})
	c.wmu.Lock()
	c.w.WriteString(h2Preface)
	// SETTINGS_INITIAL_WINDOW_SIZE, and as much for the connection.
	c.frame(h2Settings, 0, 0, binary.BigEndian.AppendUint32([]byte{0, 4}, 1<<30))
	c.frame(h2WindowUpdate, 0, 0, binary.BigEndian.AppendUint32(nil, 1<<30))
	err = c.w.Flush()
	c.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	go c.read()
	return c
}

// frame buffers one frame; the caller holds wmu.
func (c *rawH2) frame(typ, flags byte, stream uint32, payload []byte) {
	hdr := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags}
	c.w.Write(binary.BigEndian.AppendUint32(hdr, stream))
	c.w.Write(payload)
}

// open starts stream id as a gRPC call of procedure with body, ending the
// request when end is set. Call flush to send.
func (c *rawH2) open(id uint32, procedure string, body []byte, end bool) {
	var block []byte
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", c.authority}, {":path", procedure},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		// A literal header field without indexing, new name, no Huffman
		// coding (RFC 7541, section 6.2.2); every string here is shorter
		// than 127 bytes.
		block = append(block, 0, byte(len(f[0])))
		block = append(block, f[0]...)
		block = append(block, byte(len(f[1])))
		block = append(block, f[1]...)
	}
	var flags byte
	if end {
		flags = h2EndStream
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.frame(h2Headers, h2EndHeaders, id, block)
	c.frame(h2Data, flags, id, body)
}

func (c *rawH2) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.w.Flush()
}

func (c *rawH2) read() {
	defer close(c.readDone)
	defer c.notify()
	r := bufio.NewReaderSize(c.conn, 64<<10)
	hdr := make([]byte, 9)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return
		}
		payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(r, payload); err != nil {
			return
		}
		typ, stream := hdr[3], binary.BigEndian.Uint32(hdr[5:])&(1<<31-1)
		c.mu.Lock()
		switch {
		case typ == h2Headers:
			if _, refused := c.reset[stream]; !refused {
				c.answered[stream] = true
			}
		case typ == h2RSTStream && len(payload) == 4:
			if !c.answered[stream] {
				if _, seen := c.reset[stream]; !seen {
					c.reset[stream] = binary.BigEndian.Uint32(payload)
				}
			}
		case typ == h2GoAway:
			c.goAway = true
		}
		c.mu.Unlock()
		c.notify()
	}
}

func (c *rawH2) notify() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// await waits until cond, called with mu held, holds, and fails the test if
// the connection ends or ctx does first.
func (c *rawH2) await(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for {
		c.mu.Lock()
		ok := cond()
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-c.changed:
		case <-c.readDone:
			c.mu.Lock()
			ok := cond()
			c.mu.Unlock()
			if !ok {
				t.Fatalf("%s: the connection ended first", what)
			}
			return
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		}
	}
}

// outcomes counts the streams answered and refused.
func (c *rawH2) outcomes() (answered, refused int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.answered), len(c.reset)
}

// waitForGoroutines waits until at most n goroutines run.
func waitForGoroutines(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	for running := runtime.NumGoroutine(); running > n; running = runtime.NumGoroutine() {
		select {
		case <-ctx.Done():
			var stacks bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Fatalf("%d goroutines still run, want at most %d:\n%s", running, n, stacks.Bytes()[:min(stacks.Len(), 16<<10)])
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestAbuseManyStreams opens 10,000 streams: first against the limit of
// streams per connection, which must refuse those over it however fast they
// come, then spread over enough connections to hold them all. Watch streams
// stay open, and each is answered at once with a first response.
func TestAbuseManyStreams(t *testing.T) {
	const streams = 10_000
	node := startNode(t, kvnode.Config{})
	ctx := abuseContext(t)
	addr := strings.TrimPrefix(node.APIURL(), "http://")
	watch := grpcEnvelope(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: ""}})
	perConn := int(rpcserver.DefaultMaxConcurrentStreams)
	goroutines := runtime.NumGoroutine()
	logMem := func(what string) runtime.MemStats {
		m := memStats()
		t.Logf("%s: heap %s in use (%s allocated), stacks %s, %d goroutines", what, mib(m.HeapInuse), mib(m.HeapAlloc), mib(m.StackInuse), runtime.NumGoroutine())
		return m
	}
	before := logMem("before")
	base := before.HeapInuse

	// openAll opens n streams on each of conns connections at once.
	openAll := func(conns, n int) []*rawH2 {
		cs := make([]*rawH2, conns)
		for i := range cs {
			cs[i] = dialH2(t, addr)
			for s := range n {
				cs[i].open(uint32(2*s+1), kvv1connect.KVServiceWatchProcedure, watch, true)
			}
			if err := cs[i].flush(); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range cs {
			c.await(ctx, t, fmt.Sprintf("connection %d", i), func() bool { return len(c.answered)+len(c.reset) == n })
		}
		return cs
	}
	closeAll := func(cs []*rawH2) {
		for _, c := range cs {
			c.conn.Close()
			<-c.readDone
		}
	}

	// 4 connections x 2,500 streams: 250 on each are served, the rest
	// refused with RST_STREAM.
	hostile := openAll(4, streams/4)
	for i, c := range hostile {
		answered, refused := c.outcomes()
		if answered != perConn || refused != streams/4-perConn {
			t.Errorf("connection %d: %d streams answered and %d refused, want %d and %d", i, answered, refused, perConn, streams/4-perConn)
		}
		c.mu.Lock()
		for id, code := range c.reset {
			// REFUSED_STREAM, as this client has not acknowledged the
			// server's settings; PROTOCOL_ERROR once it has.
			if code != 0x1 && code != 0x7 {
				t.Errorf("connection %d: stream %d reset with code %#x", i, id, code)
				break
			}
		}
		c.mu.Unlock()
	}
	logMem(fmt.Sprintf("%d streams open of %d tried", 4*perConn, streams))
	checkHeap(t, "with the over-limit streams refused", base)
	stillServes(t, node)
	closeAll(hostile)

	// 40 connections x 250 streams: all 10,000 open at once.
	open := openAll(streams/perConn, perConn)
	total := 0
	for _, c := range open {
		answered, _ := c.outcomes()
		total += answered
	}
	if total != streams {
		t.Fatalf("%d streams answered, want %d", total, streams)
	}
	withStreams := logMem(fmt.Sprintf("%d streams open", streams)).HeapInuse
	perStream := (float64(withStreams) - float64(base)) / streams
	t.Logf("heap per open stream: %.1f KiB", perStream/1024)
	if perStream > 64<<10 {
		t.Errorf("an open stream holds %.1f KiB of heap, want at most 64 KiB", perStream/1024)
	}
	stillServes(t, node)
	closeAll(open)
	// The API server keeps up to 256 goroutines for handlers once started
	// (rpcserver's workers), and well-behaved clients keep idle
	// connections.
	waitForGoroutines(ctx, t, goroutines+256+64)
	// Freeing 10,000 streams' objects leaves spans that hold a few live
	// ones each: about half the heap in use is then such fragmentation,
	// which the runtime reuses. What the node still holds is the heap
	// allocated.
	after := logMem("streams closed")
	if after.HeapAlloc > before.HeapAlloc+heapSlack {
		t.Errorf("heap allocated after the streams closed: %s, more than %s over the %s before", mib(after.HeapAlloc), mib(heapSlack), mib(before.HeapAlloc))
	}
}

// TestAbuseSlowHeaders: clients that trickle an HTTP/1.1 request's headers
// a byte at a time are disconnected after the read-header timeout, and
// other clients are served meanwhile.
func TestAbuseSlowHeaders(t *testing.T) {
	const clients = 20
	node := startNode(t, kvnode.Config{HTTP: rpcserver.Limits{ReadHeaderTimeout: time.Second}})
	ctx := abuseContext(t)
	addr := strings.TrimPrefix(node.APIURL(), "http://")
	// Far more than would be sent before the timeout: a byte every 10 ms.
	header := "POST " + kvv1connect.KVServiceGetProcedure + " HTTP/1.1\r\nHost: " + addr + "\r\nX-Slow: " + strings.Repeat("s", 100_000)

	var wg sync.WaitGroup
	sentAll := make([]atomic.Bool, clients)
	closed := make([]error, clients)
	for i := range clients {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		readDone := make(chan struct{})
		wg.Go(func() {
			defer close(readDone)
			// Returns once the node closes the connection.
			_, closed[i] = io.Copy(io.Discard, conn)
			if closed[i] == nil {
				closed[i] = io.EOF
			}
		})
		wg.Go(func() {
			for j := range len(header) {
				if _, err := conn.Write([]byte{header[j]}); err != nil {
					return
				}
				select {
				case <-readDone:
					return
				case <-ctx.Done():
					conn.Close()
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
			sentAll[i].Store(true)
		})
	}
	stillServes(t, node)
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("slow clients still connected at the test's deadline")
	}
	for i := range clients {
		if sentAll[i].Load() {
			t.Errorf("client %d: sent all %d bytes of headers without being disconnected", i, len(header))
		}
	}
	t.Logf("%d slow clients disconnected (first: %v)", clients, closed[0])
	stillServes(t, node)
}

// TestAbuseSilentHTTP2: an h2c client that sends the connection preface
// and then nothing is disconnected (net/http waits a fixed 2 s for its
// first SETTINGS frame); one that sends its settings and then nothing is
// sent GOAWAY and disconnected after the idle timeout.
func TestAbuseSilentHTTP2(t *testing.T) {
	node := startNode(t, kvnode.Config{HTTP: rpcserver.Limits{IdleTimeout: time.Second}})
	ctx := abuseContext(t)
	addr := strings.TrimPrefix(node.APIURL(), "http://")

	t.Run("preface only", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte(h2Preface)); err != nil {
			t.Fatal(err)
		}
		deadline, _ := ctx.Deadline()
		conn.SetReadDeadline(deadline)
		start := time.Now()
		n, err := io.Copy(io.Discard, conn)
		if isTimeout(err) {
			t.Fatalf("the node kept a silent connection open until the test's deadline")
		}
		t.Logf("disconnected after %v, having sent %d bytes (its settings), err %v", time.Since(start).Round(time.Millisecond), n, err)
	})

	t.Run("settings then nothing", func(t *testing.T) {
		c := dialH2(t, addr)
		start := time.Now()
		c.await(ctx, t, "goaway", func() bool { return c.goAway })
		select {
		case <-c.readDone:
		case <-ctx.Done():
			t.Fatal("the node sent GOAWAY but kept the connection open until the test's deadline")
		}
		t.Logf("GOAWAY and disconnected after %v", time.Since(start).Round(time.Millisecond))
	})
	stillServes(t, node)
}

func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// TestAbusePipelineBackpressure: a client that sends operations and reads
// no answers stalls its own stream once MaxPipelineInFlight are unanswered,
// without the node holding what it keeps sending; once it reads, every
// answer arrives, in order. Each operation is a put of a 32 KiB value
// returning the previous one, so every answer the node holds keeps a value
// alive that is no longer in the store.
func TestAbusePipelineBackpressure(t *testing.T) {
	const (
		inFlight  = 64
		ops       = 4096 // 128 MiB of values
		valueSize = 32 << 10
	)
	node := startNode(t, kvnode.Config{Limits: kvnode.Limits{MaxPipelineInFlight: inFlight}})
	ctx := abuseContext(t)
	// Without compression, every answer is as large on the wire as the
	// value it carries (and the test is not slowed by gzip).
	client := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL(), connect.WithGRPC(), connect.WithAcceptCompression("gzip", nil, nil))
	watcher := kvv1connect.NewKVServiceClient(h2cClient(t), node.APIURL(), connect.WithGRPC())
	base := heapInuse()

	stream := client.Pipeline(ctx)
	var sent atomic.Int64
	sendErr := make(chan error, 1)
	go func() {
		for i := range ops {
			value := make([]byte, valueSize)
			binary.BigEndian.PutUint64(value, uint64(i))
			op := &kvv1.Operation{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: "bp", Value: value, ReturnPrevious: true}}}
			if err := stream.Send(&kvv1.PipelineRequest{Id: uint64(i), Operation: op}); err != nil {
				sendErr <- err
				return
			}
			sent.Add(1)
		}
		sendErr <- stream.CloseRequest()
	}()

	// The node applies at least inFlight operations before it stops
	// reading; watch the key's revision until it has, then a while longer:
	// the heap must stay bounded however long the client keeps sending.
	var maxHeap uint64
	applied := func() int64 {
		resp, err := watcher.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: "bp"}))
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		return resp.Msg.GetRevision()
	}
	for samples := 0; samples < 20 || applied() < inFlight; samples++ {
		select {
		case err := <-sendErr:
			t.Fatalf("the client sent all %d operations without reading an answer (%v): the node buffered them", ops, err)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		maxHeap = max(maxHeap, checkHeap(t, fmt.Sprintf("with %d operations sent, none read", sent.Load()), base))
	}
	stalledAt := sent.Load()
	t.Logf("stalled: %d of %d operations sent (%s), %d applied; highest heap %s (%+.1f MiB)",
		stalledAt, ops, mib(uint64(stalledAt)*valueSize), applied(), mib(maxHeap), (float64(maxHeap)-float64(base))/(1<<20))

	for i := range ops {
		resp, err := stream.Receive()
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if resp.GetId() != uint64(i) {
			t.Fatalf("answer %d: got id %d, want answers in order", i, resp.GetId())
		}
		prev := resp.GetResult().GetPut().GetPrevious()
		if i > 0 && (prev == nil || binary.BigEndian.Uint64(prev.GetValue()) != uint64(i-1)) {
			t.Fatalf("answer %d: got previous %v, want the value of put %d", i, resp.GetResult(), i-1)
		}
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("send: %v", err)
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		t.Errorf("after the last answer: got %v, want EOF", err)
	}
	_ = stream.CloseResponse()
	// The node now holds its most recent changes for Watch, as it should.
	checkHeapWithin(t, "after the stream", base, heapSlack+changelog.DefaultTailBytes)
}

// TestAbuseClientRateLimit: a client over its rate is refused with
// ResourceExhausted over every protocol, while another client, and calls
// carrying the peer token, are not.
func TestAbuseClientRateLimit(t *testing.T) {
	t.Parallel()
	const burst = 3
	cfg := kvnode.Config{
		PeerToken: "peer-secret",
		// One call in 1000 s: the burst is all a client gets in the test.
		Limits: kvnode.Limits{ClientRate: 0.001, ClientBurst: burst, ClientKeyHeader: "Flux-Api-Key"},
	}
	forEachProtocol(t, cfg, func(t *testing.T, client kvv1connect.KVServiceClient, _ *clock.Fake) {
		ctx := abuseContext(t)
		call := func(apiKey, token string, forwarded bool) error {
			req := connect.NewRequest(&kvv1.GetRequest{Key: "k"})
			req.Header().Set("Flux-Api-Key", apiKey)
			if token != "" {
				req.Header().Set("Authorization", "Bearer "+token)
			}
			if forwarded {
				req.Header().Set("Flux-Forwarded-By", "sdk")
			}
			_, err := client.Get(ctx, req)
			return err
		}
		for i := range burst {
			if err := call("a", "", false); err != nil {
				t.Fatalf("client a, call %d: %v", i, err)
			}
		}
		wantCode(t, call("a", "", false), connect.CodeResourceExhausted)
		wantCode(t, call("a", "not-the-peer-token", false), connect.CodeResourceExhausted)
		// The SDK marks its calls as forwarded too: that is no exemption.
		wantCode(t, call("a", "", true), connect.CodeResourceExhausted)
		for i := range 2 * burst {
			if err := call("a", "peer-secret", true); err != nil {
				t.Fatalf("peer call %d for client a: %v", i, err)
			}
		}
		for i := range burst {
			if err := call("b", "", false); err != nil {
				t.Fatalf("client b, call %d: %v", i, err)
			}
		}
		wantCode(t, call("b", "", false), connect.CodeResourceExhausted)
	})
}

func TestAbuseLimitsConfig(t *testing.T) {
	t.Parallel()
	// The defaults are the schema's bounds.
	key := (&kvv1.PutRequest{}).ProtoReflect().Descriptor().Fields().ByName("key")
	if got := proto.GetExtension(key.Options(), validatepb.E_Field).(*validatepb.FieldRules).GetString().GetMaxBytes(); got != kvnode.DefaultMaxKeyBytes {
		t.Errorf("schema's key bound: %d, DefaultMaxKeyBytes: %d", got, kvnode.DefaultMaxKeyBytes)
	}
	ops := (&kvv1.BatchRequest{}).ProtoReflect().Descriptor().Fields().ByName("operations")
	if got := proto.GetExtension(ops.Options(), validatepb.E_Field).(*validatepb.FieldRules).GetRepeated().GetMaxItems(); got != kvnode.DefaultMaxBatchOperations {
		t.Errorf("schema's batch bound: %d, DefaultMaxBatchOperations: %d", got, kvnode.DefaultMaxBatchOperations)
	}

	tests := []struct {
		cfg  kvnode.Config
		want string // in the error
	}{
		{kvnode.Config{Limits: kvnode.Limits{MaxKeyBytes: 1025}}, "max key bytes 1025"},
		{kvnode.Config{Limits: kvnode.Limits{MaxKeyBytes: -1}}, "max key bytes -1"},
		{kvnode.Config{Limits: kvnode.Limits{MaxBatchOperations: 1001}}, "max batch operations 1001"},
		{kvnode.Config{Limits: kvnode.Limits{MaxPipelineInFlight: 1 << 20}}, "max pipeline in flight"},
		{kvnode.Config{Limits: kvnode.Limits{ClientRate: -1}}, "rate limit"},
		{kvnode.Config{Limits: kvnode.Limits{ClientRate: 10}, Etcd: []string{"http://127.0.0.1:1"}}, "--peer-token"},
	}
	for i, tt := range tests {
		cfg := withTestDefaults(tt.cfg)
		cfg.DataDir, cfg.NodeID = t.TempDir(), "limits"
		node, err := kvnode.New(cfg)
		if err == nil {
			_ = node.Shutdown(context.Background())
			t.Errorf("#%d: New succeeded, want an error containing %q", i, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("#%d: got %v, want an error containing %q", i, err, tt.want)
		}
	}
	// The bounds themselves, and a limited standalone node without a peer
	// token, are fine.
	node := startNode(t, kvnode.Config{Limits: kvnode.Limits{MaxKeyBytes: 1024, MaxBatchOperations: 1000, ClientRate: 10}})
	stillServes(t, node)
}
