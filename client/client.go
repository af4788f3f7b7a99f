// Package client is the Go SDK for Flux-KV. Given etcd endpoints it learns
// the cluster's members and live nodes, places each key on its owner with
// the same ring as the nodes (docs/ring.md) and sends the request there
// directly over HTTP/2; Batch is split by owner and Scan merged from every
// node. Given static endpoints instead (a gateway, or any node), it sends
// everything there and lets the cluster route.
//
// Every method takes a context; deadlines travel with the request. Errors
// are *connect.Error values with the server's code, message and details
// (for example a ConditionFailure on a failed conditional write).
//
// # Retries
//
// A write is retried only when the cluster proves it did not run. Put,
// Delete and a Batch holding a put or a delete are sent again only after an
// error for which coord.WasNotExecuted is true: the connection to the node
// could not be opened, or a node refused the request before running it
// (not the owner, owner not live, owner unreachable, not ready). After any
// other error, Unavailable included, the write may or may not have been
// applied; the error is returned as is and the caller decides, for example
// by reading the key back or by writing with a condition (IfAbsent,
// IfRevision) so that running it twice is harmless.
//
// Reads (Get, Scan, a Batch of gets only) are also sent again after any
// other Unavailable error.
//
// With WithEtcd a request is sent again at most once, and only on a newer
// view of the cluster: retrying on the same view would fail the same way.
// When a node answers that it is not the owner or that the owner is not
// live, the client's view is behind the cluster's, so the client waits for
// its view to change, up to one second and never past the context's
// deadline, before it gives up. With WithEndpoints a request is sent to
// each endpoint at most once, in order.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/ring"
)

// Client talks to a Flux-KV cluster. It is safe for concurrent use. Close
// it when done.
type Client struct {
	cfg     config
	http    *http.Client
	etcd    *clientv3.Client     // nil in static mode
	watcher *discovery.Watcher   // nil in static mode
	view    atomic.Pointer[view] // nil in static mode

	mu    sync.Mutex
	nodes map[string]kvv1connect.KVServiceClient // by base URL

	// start is the static endpoint that calls try first. Each call walks
	// the endpoints from it with its own index, so that concurrent failures
	// cannot make a call skip one; a failing endpoint moves start on by a
	// compare-and-swap, so that calls failing together move it only once.
	start atomic.Uint64

	closeOnce sync.Once
	closeErr  error // what every Close returns
	stopc     chan struct{}
	donec     chan struct{}
}

// view is what the client routes by in etcd mode: a snapshot and the ring
// over its RingMembers, published together so that a request is never routed
// by the ring of one revision and the addresses of another.
type view struct {
	snap    *discovery.Snapshot
	ring    *ring.Ring
	changed chan struct{} // closed when a newer view is published
}

// Option configures New.
type Option func(*config)

type config struct {
	etcd      []string
	endpoints []string
	opts      []connect.ClientOption
	tls       *tls.Config
	etcdTLS   *tls.Config
}

// WithEtcd makes the client discover the cluster through etcd and route
// each key to its owner.
func WithEtcd(endpoints ...string) Option { return func(c *config) { c.etcd = endpoints } }

// WithEndpoints sends every request to these base URLs (a gateway or
// nodes), trying the next one when one is unavailable (see Retries in the
// package documentation for when a write is sent again).
func WithEndpoints(urls ...string) Option { return func(c *config) { c.endpoints = urls } }

// WithTLS configures connections to nodes and gateways over TLS: https://
// endpoints, and nodes that register as serving TLS (nil, the default, uses
// the system's roots and no client certificate). Give a client certificate
// in it for servers that require one (mutual TLS).
func WithTLS(cfg *tls.Config) Option { return func(c *config) { c.tls = cfg } }

// WithEtcdTLS configures the connection to etcd over TLS (https://
// endpoints).
func WithEtcdTLS(cfg *tls.Config) Option { return func(c *config) { c.etcdTLS = cfg } }

// WithClientOptions adds connect client options (the default is the gRPC
// protocol).
func WithClientOptions(opts ...connect.ClientOption) Option {
	return func(c *config) { c.opts = append(c.opts, opts...) }
}

// New connects to the cluster. With WithEtcd it loads the membership
// before returning, and fails if etcd does not answer within ctx; ctx only
// bounds that first load, not the client's life.
func New(ctx context.Context, opts ...Option) (*Client, error) {
	var cfg config
	for _, opt := range opts {
		opt(&cfg)
	}
	if len(cfg.etcd) == 0 && len(cfg.endpoints) == 0 {
		return nil, errors.New("flux client: give WithEtcd or WithEndpoints")
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	protocols.SetHTTP2(true)
	c := &Client{
		cfg:   cfg,
		http:  &http.Client{Transport: &http.Transport{Protocols: &protocols, TLSClientConfig: cfg.tls.Clone()}},
		nodes: map[string]kvv1connect.KVServiceClient{},
		stopc: make(chan struct{}),
		donec: make(chan struct{}),
	}
	if len(cfg.etcd) == 0 {
		close(c.donec)
		return c, nil
	}
	// Not ctx: the etcd client's context is its lifetime, and a caller's
	// ctx that ends after New would stop discovery. (Connect also keeps
	// etcd's logs out of the application's stderr.)
	etcd, err := discovery.Connect(context.Background(), cfg.etcd, cfg.etcdTLS)
	if err != nil {
		return nil, fmt.Errorf("flux client: %w", err)
	}
	c.etcd = etcd
	c.watcher = discovery.NewWatcher(etcd, nil)
	if err := c.watcher.Start(ctx); err != nil {
		etcd.Close()
		return nil, fmt.Errorf("flux client: %w", err)
	}
	snap, changed := c.watcher.Current()
	if err := c.publish(snap); err != nil {
		c.watcher.Close()
		etcd.Close()
		return nil, err
	}
	go c.follow(changed)
	return c, nil
}

// Close releases the client's connections. Calls still waiting for the
// cluster's view to change give up. It is safe to call more than once, also
// concurrently; every call returns the first one's result.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.stopc)
		<-c.donec
		c.http.CloseIdleConnections()
		if c.etcd != nil {
			c.watcher.Close()
			c.closeErr = c.etcd.Close()
		}
	})
	return c.closeErr
}

// follow publishes a new view whenever the cluster changes.
func (c *Client) follow(changed <-chan struct{}) {
	defer close(c.donec)
	for {
		select {
		case <-c.stopc:
			return
		case <-changed:
		}
		var snap *discovery.Snapshot
		snap, changed = c.watcher.Current()
		_ = c.publish(snap)
	}
}

// publish makes snap the view to route by. Most changes are instances
// coming and going, so the ring, which costs a sort of every virtual node,
// is rebuilt only when the members differ. If it cannot be built, the old
// ring stays. Only New and then follow call it, so views are published in
// order.
func (c *Client) publish(snap *discovery.Snapshot) error {
	old := c.view.Load()
	ids := snap.RingMembers()
	var r *ring.Ring
	if old != nil && slices.Equal(ids, old.ring.Members()) {
		r = old.ring
	} else {
		var err error
		if r, err = ring.New(ids); err != nil {
			if old == nil {
				return fmt.Errorf("flux client: %w", err)
			}
			r = old.ring
		}
	}
	c.view.Store(&view{snap: snap, ring: r, changed: make(chan struct{})})
	if old != nil {
		close(old.changed)
	}
	return nil
}

func (c *Client) node(url string) kvv1connect.KVServiceClient {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[url]
	if !ok {
		n = kvv1connect.NewKVServiceClient(c.http, url, append([]connect.ClientOption{connect.WithGRPC()}, c.cfg.opts...)...)
		c.nodes[url] = n
	}
	return n
}

// errNoMembers fails requests in etcd mode while the cluster has no
// members: there is no node to send them to, and an empty answer would be
// a lie.
func errNoMembers() error {
	return connect.NewError(connect.CodeUnavailable, errors.New("the cluster has no members"))
}

// owner returns the node that owns key in v, and its id. A member that is
// not live fails fast with Unavailable naming it.
func (c *Client) owner(v *view, key string) (kvv1connect.KVServiceClient, string, error) {
	id := v.ring.Owner(key)
	if id == "" {
		return nil, "", errNoMembers()
	}
	node, err := c.member(v, id, "which owns this key")
	return node, id, err
}

// member returns a client for member id, or Unavailable if it is not live
// in v; why says what the member is needed for.
func (c *Client) member(v *view, id, why string) (kvv1connect.KVServiceClient, error) {
	inst, ok := v.snap.Instances[kvv1connect.KVServiceName][id]
	if !ok {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %s, %s, is not live", id, why))
	}
	url, err := inst.DialURL(c.cfg.tls != nil)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	return c.node(url), nil
}

// Get reads a key. It is a read: see Retries in the package documentation.
func (c *Client) Get(ctx context.Context, key string) (*kvv1.GetResponse, error) {
	return call(ctx, c, key, false, func(n kvv1connect.KVServiceClient) (*kvv1.GetResponse, error) {
		resp, err := n.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key}))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	})
}

// Put writes a key; req carries the value, TTL and condition. It is sent
// again only when the cluster proves the first attempt did not run (see
// Retries in the package documentation); after any other error the write
// may or may not have been applied.
func (c *Client) Put(ctx context.Context, req *kvv1.PutRequest) (*kvv1.PutResponse, error) {
	return call(ctx, c, req.GetKey(), true, func(n kvv1connect.KVServiceClient) (*kvv1.PutResponse, error) {
		resp, err := n.Put(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	})
}

// Delete removes a key. Like Put, it is sent again only when the cluster
// proves the first attempt did not run.
func (c *Client) Delete(ctx context.Context, req *kvv1.DeleteRequest) (*kvv1.DeleteResponse, error) {
	return call(ctx, c, req.GetKey(), true, func(n kvv1connect.KVServiceClient) (*kvv1.DeleteResponse, error) {
		resp, err := n.Delete(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	})
}

// Scan lists keys by prefix, one page per call. In etcd mode it asks every
// member for its keys after the cursor, in parallel, and merges them in key
// order; the page's cursor works on every node. A member that is down, or
// a cluster with no members, fails the scan with Unavailable rather than
// leave keys silently out. It is a read: see Retries in the package
// documentation.
func (c *Client) Scan(ctx context.Context, req *kvv1.ScanRequest) (*kvv1.ScanResponse, error) {
	if c.watcher == nil {
		return call(ctx, c, "", false, func(n kvv1connect.KVServiceClient) (*kvv1.ScanResponse, error) {
			resp, err := n.Scan(ctx, connect.NewRequest(req))
			if err != nil {
				return nil, err
			}
			return resp.Msg, nil
		})
	}
	start := time.Now()
	for attempt := 0; ; attempt++ {
		v := c.view.Load()
		nodes, err := c.scanNodes(v)
		if err != nil {
			return nil, err
		}
		page, err := scan(ctx, nodes, req)
		if err == nil || attempt > 0 || !c.mayRetry(ctx, v, err, false, attempt, start) {
			return page, err
		}
	}
}

// scanNodes returns a client for every member of v, which a scan needs.
func (c *Client) scanNodes(v *view) ([]kvv1connect.KVServiceClient, error) {
	members := v.ring.Members()
	if len(members) == 0 {
		return nil, errNoMembers()
	}
	nodes := make([]kvv1connect.KVServiceClient, len(members))
	for i, id := range members {
		node, err := c.member(v, id, "which a scan needs")
		if err != nil {
			return nil, err
		}
		nodes[i] = node
	}
	return nodes, nil
}

// scan sends req to every node in parallel and merges their pages; it
// fails with the first node's error, in member order.
func scan(ctx context.Context, nodes []kvv1connect.KVServiceClient, req *kvv1.ScanRequest) (*kvv1.ScanResponse, error) {
	pages := make([]*kvv1.ScanResponse, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Go(func() {
			r := connect.NewRequest(req)
			r.Header().Set(coord.ForwardedHeader, "sdk")
			resp, err := node.Scan(ctx, r)
			if err != nil {
				errs[i] = err
				return
			}
			pages[i] = resp.Msg
		})
	}
	wg.Wait()
	if i := slices.IndexFunc(errs, func(e error) bool { return e != nil }); i >= 0 {
		return nil, errs[i]
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = defaultScanLimit
	}
	page, err := coord.MergeScan(pages, limit)
	if err != nil {
		// The package promises *connect.Error values; a node that answers
		// a cursor the merge cannot read is broken, not unavailable.
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return page, nil
}

// defaultScanLimit is the page size of a Scan that asks for limit 0, as on
// the server.
const defaultScanLimit = 100

// Batch runs operations and returns one result per operation, in order. In
// etcd mode it sends each owner its operations in one call, all owners in
// parallel; operations whose owner is down fail alone, and a cluster with
// no members fails the whole batch with Unavailable. A batch holding a put
// or a delete is a write, and a batch of gets a read: see Retries in the
// package documentation. In etcd mode the rule applies to each owner's
// call.
func (c *Client) Batch(ctx context.Context, ops []*kvv1.Operation) ([]*kvv1.OperationResult, error) {
	if c.watcher == nil {
		return call(ctx, c, "", writes(ops), func(n kvv1connect.KVServiceClient) ([]*kvv1.OperationResult, error) {
			resp, err := n.Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: ops}))
			if err != nil {
				return nil, err
			}
			return resp.Msg.GetResults(), nil
		})
	}
	v := c.view.Load()
	if v.ring.Len() == 0 {
		return nil, errNoMembers()
	}
	results := make([]*kvv1.OperationResult, len(ops))
	if again := c.batch(ctx, v, ops, seq(len(ops)), results, true); len(again) > 0 {
		c.batch(ctx, c.view.Load(), ops, again, results, false)
	}
	// Operations refused one by one because their keys were moving between
	// nodes had no effect: send them again once the move has settled.
	start := time.Now()
	for attempt := 0; ; attempt++ {
		moved := movedOps(ops, results)
		if len(moved) == 0 || time.Since(start) > coord.RerouteBudget {
			break
		}
		v := c.view.Load()
		select {
		case <-v.changed:
		case <-time.After(coord.MovingBackoff(attempt)):
		case <-ctx.Done():
			return results, nil
		case <-c.stopc:
			return results, nil
		}
		c.batch(ctx, c.view.Load(), ops, moved, results, false)
	}
	return results, nil
}

// movedOps returns, ascending, the operations whose result is a refusal
// because their key was moving (MOVING, NOT_OWNER), except those followed
// in the batch by an operation on the same key that did run: sending one
// again would then reorder the two.
func movedOps(ops []*kvv1.Operation, results []*kvv1.OperationResult) []int {
	var out []int
	ranLater := map[string]bool{}
	for i := len(ops) - 1; i >= 0; i-- {
		key := coord.OperationKey(ops[i])
		switch results[i].GetError().GetReason() {
		case coord.ReasonMoving, coord.ReasonNotOwner:
			if !ranLater[key] {
				out = append(out, i)
			}
		default:
			ranLater[key] = true
		}
	}
	slices.Reverse(out)
	return out
}

// batch sends the operations at idx (ascending) to their owners in v, one
// call per owner, all owners in parallel, and fills in their results. If
// retry is set, the operations of calls that failed but may be sent again
// (mayRetry) are left without results and returned, ascending.
func (c *Client) batch(ctx context.Context, v *view, ops []*kvv1.Operation, idx []int, results []*kvv1.OperationResult, retry bool) []int {
	groups := map[string][]int{}
	nodes := map[string]kvv1connect.KVServiceClient{}
	for _, i := range idx {
		node, id, err := c.owner(v, coord.OperationKey(ops[i]))
		if err != nil {
			results[i] = errorResult(err)
			continue
		}
		groups[id] = append(groups[id], i)
		nodes[id] = node
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		again []int
	)
	for id, group := range groups {
		wg.Go(func() {
			sub := make([]*kvv1.Operation, len(group))
			for j, i := range group {
				sub[j] = ops[i]
			}
			resp, err := nodes[id].Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: sub}))
			if err != nil && retry && c.mayRetry(ctx, v, err, writes(sub), 0, time.Now()) {
				mu.Lock()
				again = append(again, group...)
				mu.Unlock()
				return
			}
			for j, i := range group {
				if err != nil || j >= len(resp.Msg.GetResults()) {
					if err == nil {
						err = connect.NewError(connect.CodeInternal, fmt.Errorf("node %s answered too few results", id))
					}
					results[i] = errorResult(err)
					continue
				}
				results[i] = resp.Msg.GetResults()[j]
			}
		})
	}
	wg.Wait()
	// Operations run in request order on each owner, so the retry must
	// send them in that order too, whatever owners they now have.
	slices.Sort(again)
	return again
}

// writes reports whether ops holds anything but gets; an operation with
// nothing set counts as a write, so that it is never sent twice.
func writes(ops []*kvv1.Operation) bool {
	return slices.ContainsFunc(ops, func(op *kvv1.Operation) bool { return op.GetGet() == nil })
}

// seq returns 0, 1, ..., n-1.
func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func errorResult(err error) *kvv1.OperationResult {
	return &kvv1.OperationResult{Result: &kvv1.OperationResult_Error{Error: &kvv1.OperationError{
		Code: connect.CodeOf(err).String(), Message: err.Error(), Reason: coord.Reason(err),
	}}}
}
