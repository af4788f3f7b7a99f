package kvnode

import (
	"context"
	"crypto/rand"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/rpcserver"
	"github.com/fluxkv/fluxkv/platform/store"
)

// serveWatch serves a handler over an in-memory tail with the given watch
// limits, which only tests change.
func serveWatch(t *testing.T, cfg watchConfig) (kvv1connect.KVServiceClient, *store.Store) {
	t.Helper()
	client, st, _ := serveWatchGated(t, cfg)
	return client, st
}

// serveWatchGated is serveWatch with a gate on the client's socket: while
// it is closed the client reads nothing from the network, as a client
// too slow to keep up would, whatever flow-control windows its HTTP/2
// transport grants. The server then blocks once the socket buffers are
// full.
func serveWatchGated(t *testing.T, cfg watchConfig) (kvv1connect.KVServiceClient, *store.Store, *gate) {
	t.Helper()
	tail := changelog.NewTail("solo", 0, 0, 0)
	st := store.New(store.WithChangeHook(tail.Append))
	h := newHandler(st, nil, 1<<20, Limits{}, time.Now, inMemory{}, tail, &router{self: "solo"}).(*handler)
	h.watch = cfg
	mux := http.NewServeMux()
	mux.Handle(kvv1connect.NewKVServiceHandler(h))
	srv, err := rpcserver.Listen("127.0.0.1:0", mux, rpcserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	g := &gate{open: make(chan struct{})}
	close(g.open)
	dialer := &net.Dialer{}
	transport := &http.Transport{Protocols: &protocols, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// A fixed, small receive buffer: the kernel's autotuning may
		// otherwise take in tens of megabytes for a client that reads
		// nothing.
		if err := c.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
			_ = c.Close()
			return nil, err
		}
		return &gatedConn{Conn: c, gate: g}, nil
	}}
	t.Cleanup(func() {
		transport.CloseIdleConnections()
		srv.Close()
		_ = st.Close()
		tail.Close()
	})
	return kvv1connect.NewKVServiceClient(&http.Client{Transport: transport}, srv.URL(), connect.WithGRPC()), st, g
}

// gate blocks the reads of gatedConns while it is closed.
type gate struct {
	mu   sync.Mutex
	open chan struct{} // closed while reads may proceed
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = make(chan struct{})
}

func (g *gate) reopen() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.open)
}

func (g *gate) wait() {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	<-open
}

type gatedConn struct {
	net.Conn
	gate *gate
}

func (c *gatedConn) Read(p []byte) (int, error) {
	c.gate.wait()
	return c.Conn.Read(p)
}

func mustPut(t *testing.T, st *store.Store, key string, value []byte) int64 {
	t.Helper()
	res, err := st.Put(key, value, store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res.Revision
}

func position(t *testing.T, resp *kvv1.WatchResponse) int64 {
	t.Helper()
	pos, err := decodeToken(resp.GetResumeToken())
	if err != nil {
		t.Fatalf("token %q: %v", resp.GetResumeToken(), err)
	}
	return pos["solo"]
}

// TestWatchProgressAdvancesToken: an idle watch gets responses without
// events whose token moves past the changes that did not match, so a
// client resuming from it does not read them again.
func TestWatchProgressAdvancesToken(t *testing.T) {
	t.Parallel()
	client, st := serveWatch(t, watchConfig{progress: 20 * time.Millisecond, buffer: 4, slow: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := client.Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: "a/"}}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatalf("first response: %v", stream.Err())
	}
	if got := position(t, stream.Msg()); got != 0 || len(stream.Msg().GetEvents()) != 0 {
		t.Fatalf("first response: got position %d with %d events, want 0 with none", got, len(stream.Msg().GetEvents()))
	}
	mustPut(t, st, "b/1", nil)
	last := mustPut(t, st, "b/2", nil)
	for stream.Receive() {
		if n := len(stream.Msg().GetEvents()); n != 0 {
			t.Fatalf("got %d events on a watch nothing matched", n)
		}
		if position(t, stream.Msg()) == last {
			break
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("no progress message reached revision %d: %v", last, err)
	}
	rev := mustPut(t, st, "a/1", []byte("v"))
	for stream.Receive() {
		if evs := stream.Msg().GetEvents(); len(evs) > 0 {
			if len(evs) != 1 || evs[0].GetKey() != "a/1" || evs[0].GetRevision() != rev || position(t, stream.Msg()) != rev {
				t.Fatalf("got %v with position %d, want a/1 at revision %d", evs, position(t, stream.Msg()), rev)
			}
			return
		}
	}
	t.Fatalf("no event after the progress messages: %v", stream.Err())
}

// TestWatchCutsOffSlowConsumer: a client that stops reading while changes
// keep coming is cut off with RESOURCE_EXHAUSTED once the buffer has been
// full for the limit, and writers never wait for it.
func TestWatchCutsOffSlowConsumer(t *testing.T) {
	t.Parallel()
	client, st, g := serveWatchGated(t, watchConfig{progress: time.Hour, buffer: 1, slow: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := client.Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{Target: &kvv1.WatchRequest_Prefix{Prefix: ""}}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatalf("first response: %v", stream.Err())
	}
	// The client stops reading its socket. Far more than the socket
	// buffers hold is written, in waves so that the reader queues several
	// batches.
	g.close()
	// Random, so that compression (the client accepts gzip) cannot shrink
	// it below the socket buffers.
	value := make([]byte, 64<<10)
	_, _ = rand.Read(value)
	for wave := range 8 {
		for i := range 40 {
			mustPut(t, st, string(rune('a'+wave))+"/"+string(rune('a'+i)), value)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Wait well past the limit before reading again.
	time.Sleep(500 * time.Millisecond)
	g.reopen()
	events := 0
	for stream.Receive() {
		n := len(stream.Msg().GetEvents())
		if n*len(value) > watchResponseBytes {
			t.Errorf("a response with %d events of %d bytes, over the %d-byte cut", n, len(value), watchResponseBytes)
		}
		events += n
	}
	if got := connect.CodeOf(stream.Err()); got != connect.CodeResourceExhausted {
		t.Fatalf("after %d events: got %v, want resource_exhausted", events, stream.Err())
	}
	if events >= 8*40 {
		t.Errorf("got all %d events before being cut off", events)
	}
}
