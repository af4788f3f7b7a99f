package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fluxkv/fluxkv/client"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
)

// fakeNode is a KVService that answers every call with the error refuse
// returns for it (nil: success), and counts the calls it gets.
type fakeNode struct {
	kvv1connect.UnimplementedKVServiceHandler
	refuse func(call int) error // call counts from 1
	calls  atomic.Int32
	url    string
}

// startFake serves a fakeNode over h2c, as nodes do.
func startFake(t *testing.T, refuse func(call int) error) *fakeNode {
	t.Helper()
	f := &fakeNode{refuse: refuse}
	mux := http.NewServeMux()
	mux.Handle(kvv1connect.NewKVServiceHandler(f))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func (f *fakeNode) answer() error {
	if f.refuse == nil {
		f.calls.Add(1)
		return nil
	}
	return f.refuse(int(f.calls.Add(1)))
}

func (f *fakeNode) Get(context.Context, *connect.Request[kvv1.GetRequest]) (*connect.Response[kvv1.GetResponse], error) {
	if err := f.answer(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&kvv1.GetResponse{Found: true, Value: []byte(f.url)}), nil
}

func (f *fakeNode) Put(context.Context, *connect.Request[kvv1.PutRequest]) (*connect.Response[kvv1.PutResponse], error) {
	if err := f.answer(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&kvv1.PutResponse{Revision: 1}), nil
}

func (f *fakeNode) Delete(context.Context, *connect.Request[kvv1.DeleteRequest]) (*connect.Response[kvv1.DeleteResponse], error) {
	if err := f.answer(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&kvv1.DeleteResponse{Found: true, Revision: 1}), nil
}

func (f *fakeNode) Batch(_ context.Context, req *connect.Request[kvv1.BatchRequest]) (*connect.Response[kvv1.BatchResponse], error) {
	if err := f.answer(); err != nil {
		return nil, err
	}
	results := make([]*kvv1.OperationResult, len(req.Msg.GetOperations()))
	for i := range results {
		results[i] = &kvv1.OperationResult{Result: &kvv1.OperationResult_Put{Put: &kvv1.PutResponse{Revision: 1}}}
	}
	return connect.NewResponse(&kvv1.BatchResponse{Results: results}), nil
}

func (f *fakeNode) Scan(context.Context, *connect.Request[kvv1.ScanRequest]) (*connect.Response[kvv1.ScanResponse], error) {
	if err := f.answer(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&kvv1.ScanResponse{Items: []*kvv1.KeyValue{{Key: "k"}}}), nil
}

// Refusals a node may answer. Only notReady proves the request did not run.
var (
	unavailable = func(int) error { return connect.NewError(connect.CodeUnavailable, errors.New("overloaded")) }
	notReady    = func(int) error {
		return coord.NotExecuted(coord.ReasonNotReady, "n1", errors.New("the cluster's members are changing; retry"))
	}
	internal = func(int) error { return connect.NewError(connect.CodeInternal, errors.New("disk on fire")) }
)

// One operation of each kind, as the methods a user calls.
var (
	get = func(ctx context.Context, c *client.Client) error {
		_, err := c.Get(ctx, "k")
		return err
	}
	put = func(ctx context.Context, c *client.Client) error {
		_, err := c.Put(ctx, &kvv1.PutRequest{Key: "k", Value: []byte("v")})
		return err
	}
	del = func(ctx context.Context, c *client.Client) error {
		_, err := c.Delete(ctx, &kvv1.DeleteRequest{Key: "k"})
		return err
	}
	scan = func(ctx context.Context, c *client.Client) error {
		_, err := c.Scan(ctx, &kvv1.ScanRequest{Prefix: "k"})
		return err
	}
	batchPut = func(ctx context.Context, c *client.Client) error {
		_, err := c.Batch(ctx, []*kvv1.Operation{
			{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: "a"}}},
			{Op: &kvv1.Operation_Put{Put: &kvv1.PutRequest{Key: "k"}}},
		})
		return err
	}
	batchGet = func(ctx context.Context, c *client.Client) error {
		_, err := c.Batch(ctx, []*kvv1.Operation{{Op: &kvv1.Operation_Get{Get: &kvv1.GetRequest{Key: "k"}}}})
		return err
	}
)

func TestStaticRetriesWritesOnlyWhenNotExecuted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		op      func(context.Context, *client.Client) error
		refuse  func(int) error // the first endpoint's answer
		wantErr connect.Code    // 0: success
		want    [2]int32        // calls to each endpoint
	}{
		{"get after unavailable", get, unavailable, 0, [2]int32{1, 1}},
		{"scan after unavailable", scan, unavailable, 0, [2]int32{1, 1}},
		{"batch of gets after unavailable", batchGet, unavailable, 0, [2]int32{1, 1}},
		{"put after unavailable", put, unavailable, connect.CodeUnavailable, [2]int32{1, 0}},
		{"delete after unavailable", del, unavailable, connect.CodeUnavailable, [2]int32{1, 0}},
		{"batch with a put after unavailable", batchPut, unavailable, connect.CodeUnavailable, [2]int32{1, 0}},
		{"put after not ready", put, notReady, 0, [2]int32{1, 1}},
		{"delete after not ready", del, notReady, 0, [2]int32{1, 1}},
		{"batch with a put after not ready", batchPut, notReady, 0, [2]int32{1, 1}},
		{"get after internal", get, internal, connect.CodeInternal, [2]int32{1, 0}},
		{"put after internal", put, internal, connect.CodeInternal, [2]int32{1, 0}},
	}
	for i, tt := range tests {
		first, second := startFake(t, tt.refuse), startFake(t, nil)
		c, err := client.New(context.Background(), client.WithEndpoints(first.url, second.url))
		if err != nil {
			t.Fatal(err)
		}
		err = tt.op(context.Background(), c)
		if got := codeOrZero(err); got != tt.wantErr {
			t.Errorf("#%d %s: got %v, want code %v", i, tt.name, err, tt.wantErr)
		}
		if got := [2]int32{first.calls.Load(), second.calls.Load()}; got != tt.want {
			t.Errorf("#%d %s: got calls %v, want %v", i, tt.name, got, tt.want)
		}
		_ = c.Close()
	}
}

func TestStaticRetriesWriteAfterDialError(t *testing.T) {
	t.Parallel()
	live := startFake(t, nil)
	c, err := client.New(context.Background(), client.WithEndpoints(deadURL(t), live.url))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := put(context.Background(), c); err != nil {
		t.Fatalf("put with a dead first endpoint: %v", err)
	}
	if got := live.calls.Load(); got != 1 {
		t.Errorf("got %d calls to the live endpoint, want 1", got)
	}
}

func TestStaticConcurrentFailuresSkipNoEndpoint(t *testing.T) {
	t.Parallel()
	const n = 8
	// The first endpoint holds the first n calls until all have reached
	// it, so that they fail together.
	var arrived sync.WaitGroup
	arrived.Add(n)
	first := startFake(t, func(call int) error {
		if call <= n {
			arrived.Done()
			arrived.Wait()
		}
		return unavailable(call)
	})
	second, third := startFake(t, nil), startFake(t, nil)
	c, err := client.New(context.Background(), client.WithEndpoints(first.url, second.url, third.url))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	values := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, err := c.Get(context.Background(), "k")
			values[i], errs[i] = string(resp.GetValue()), err
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || values[i] != second.url {
			t.Errorf("#%d: got %q, %v, want an answer from the second endpoint %s", i, values[i], errs[i], second.url)
		}
	}
	if got, want := [3]int32{first.calls.Load(), second.calls.Load(), third.calls.Load()}, [3]int32{n, n, 0}; got != want {
		t.Errorf("got calls %v, want %v", got, want)
	}
}

func TestCloseConcurrently(t *testing.T) {
	t.Parallel()
	etcdURL, _ := startEtcd(t)
	for round := range 20 {
		var c *client.Client
		var err error
		if round%2 == 0 {
			c, err = client.New(context.Background(), client.WithEndpoints("http://127.0.0.1:1"))
		} else {
			c, err = client.New(context.Background(), client.WithEtcd(etcdURL))
		}
		if err != nil {
			t.Fatal(err)
		}
		const callers = 8
		errs := make([]error, callers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				<-start
				errs[i] = c.Close()
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != errs[0] {
				t.Errorf("round %d #%d: got %v, want %v, as the first Close", round, i, err, errs[0])
			}
		}
	}
}

func TestEtcdNoMembers(t *testing.T) {
	t.Parallel()
	etcdURL, _ := startEtcd(t)
	c, err := client.New(context.Background(), client.WithEtcd(etcdURL))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ops := []func(context.Context, *client.Client) error{get, put, scan, batchPut}
	for i, op := range ops {
		err := op(context.Background(), c)
		if got := connect.CodeOf(err); got != connect.CodeUnavailable || !strings.Contains(err.Error(), "no members") {
			t.Errorf("#%d: got %v, want unavailable: the cluster has no members", i, err)
		}
	}
}

// A node whose ring disagrees with the client's refuses with NOT_OWNER;
// the client waits for its own view to change and sends the request again,
// writes included, to the owner of the new view.
func TestEtcdWaitsForViewAfterNotOwner(t *testing.T) {
	t.Parallel()
	etcdURL, kv := startEtcd(t)
	ops := []func(context.Context, *client.Client) error{get, put, del, scan, batchPut}
	for i, op := range ops {
		to := startFake(t, nil)
		refused := make(chan struct{})
		var once sync.Once
		from := startFake(t, func(int) error {
			once.Do(func() { close(refused) })
			return coord.NotExecuted(coord.ReasonNotOwner, "n1", errors.New("not mine"))
		})
		registerNode(t, kv, "n1", from.url)
		// New returns with the view of etcd's current revision, which
		// holds n1 at from.
		c, err := client.New(context.Background(), client.WithEtcd(etcdURL))
		if err != nil {
			t.Fatal(err)
		}
		// Move n1 only once it has refused, so that the client's view is
		// still the old one when the refusal reaches it.
		moved := make(chan struct{})
		go func() {
			defer close(moved)
			<-refused
			registerNode(t, kv, "n1", to.url)
		}()
		if err := op(context.Background(), c); err != nil {
			t.Errorf("#%d: got %v, want success on the new owner", i, err)
		}
		<-moved
		if got, want := [2]int32{from.calls.Load(), to.calls.Load()}, [2]int32{1, 1}; got != want {
			t.Errorf("#%d: got calls %v, want %v", i, got, want)
		}
		_ = c.Close()
	}
}

// startEtcd starts an embedded etcd and returns its URL and a client.
func startEtcd(t *testing.T) (string, *clientv3.Client) {
	t.Helper()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	kv, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.ClientURL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kv.Close() })
	return etcd.ClientURL(), kv
}

// registerNode makes id a member, live at url, as a node would; without a
// lease, since the test ends before one would matter.
func registerNode(t *testing.T, kv *clientv3.Client, id, url string) {
	t.Helper()
	member, _ := json.Marshal(discovery.Member{ID: id})
	inst, _ := json.Marshal(discovery.Instance{ID: id, Address: strings.TrimPrefix(url, "http://")})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := kv.Txn(ctx).Then(
		clientv3.OpPut(discovery.MemberKey(id), string(member)),
		clientv3.OpPut(discovery.InstanceKey(kvv1connect.KVServiceName, id), string(inst)),
	).Commit(); err != nil {
		t.Error(err)
	}
}

// deadURL returns a URL on which nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	return url
}

func codeOrZero(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}
