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
package client

import (
	"context"
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
	etcd    *clientv3.Client   // nil in static mode
	watcher *discovery.Watcher // nil in static mode
	ring    atomic.Pointer[ring.Ring]

	mu    sync.Mutex
	nodes map[string]kvv1connect.KVServiceClient // by base URL

	next  atomic.Uint64 // round-robin over static endpoints
	stopc chan struct{}
	donec chan struct{}
}

// Option configures New.
type Option func(*config)

type config struct {
	etcd      []string
	endpoints []string
	opts      []connect.ClientOption
}

// WithEtcd makes the client discover the cluster through etcd and route
// each key to its owner.
func WithEtcd(endpoints ...string) Option { return func(c *config) { c.etcd = endpoints } }

// WithEndpoints sends every request to these base URLs (a gateway or
// nodes), trying the next one when one is unreachable.
func WithEndpoints(urls ...string) Option { return func(c *config) { c.endpoints = urls } }

// WithClientOptions adds connect client options (the default is the gRPC
// protocol).
func WithClientOptions(opts ...connect.ClientOption) Option {
	return func(c *config) { c.opts = append(c.opts, opts...) }
}

// New connects to the cluster. With WithEtcd it loads the membership
// before returning, and fails if etcd does not answer within ctx.
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
		http:  &http.Client{Transport: &http.Transport{Protocols: &protocols}},
		nodes: map[string]kvv1connect.KVServiceClient{},
		stopc: make(chan struct{}),
		donec: make(chan struct{}),
	}
	if len(cfg.etcd) == 0 {
		close(c.donec)
		return c, nil
	}
	etcd, err := clientv3.New(clientv3.Config{Endpoints: cfg.etcd, DialTimeout: 5 * time.Second, Context: ctx})
	if err != nil {
		return nil, fmt.Errorf("flux client: connect to etcd: %w", err)
	}
	c.etcd = etcd
	c.watcher = discovery.NewWatcher(etcd, nil)
	if err := c.watcher.Start(ctx); err != nil {
		etcd.Close()
		return nil, fmt.Errorf("flux client: %w", err)
	}
	snap, changed := c.watcher.Current()
	if err := c.rebuild(snap); err != nil {
		c.watcher.Close()
		etcd.Close()
		return nil, err
	}
	go c.follow(changed)
	return c, nil
}

// Close releases the client's connections.
func (c *Client) Close() error {
	select {
	case <-c.stopc:
		return nil
	default:
	}
	close(c.stopc)
	<-c.donec
	c.http.CloseIdleConnections()
	if c.etcd != nil {
		c.watcher.Close()
		return c.etcd.Close()
	}
	return nil
}

// follow rebuilds the ring whenever the cluster changes.
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
		_ = c.rebuild(snap)
	}
}

func (c *Client) rebuild(snap *discovery.Snapshot) error {
	r, err := ring.New(snap.MemberIDs())
	if err != nil {
		return fmt.Errorf("flux client: %w", err)
	}
	c.ring.Store(r)
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

// owner returns the node to send key to, and its id ("" in static mode).
// A member that is not live fails fast with Unavailable naming it.
func (c *Client) owner(key string) (kvv1connect.KVServiceClient, string, error) {
	node, id, _, err := c.ownerURL(key)
	return node, id, err
}

func (c *Client) ownerURL(key string) (kvv1connect.KVServiceClient, string, string, error) {
	if c.watcher == nil {
		eps := c.cfg.endpoints
		url := eps[int(c.next.Load()%uint64(len(eps)))]
		return c.node(url), "", url, nil
	}
	id := c.ring.Load().Owner(key)
	if id == "" {
		return nil, "", "", connect.NewError(connect.CodeUnavailable, errors.New("the cluster has no members"))
	}
	return c.member(id)
}

// member returns a client for a live member.
func (c *Client) member(id string) (kvv1connect.KVServiceClient, string, string, error) {
	inst, ok := c.watcher.Snapshot().Instances[kvv1connect.KVServiceName][id]
	if !ok {
		return nil, id, "", connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %s, which owns this key, is not live", id))
	}
	url := "http://" + inst.Address
	return c.node(url), id, url, nil
}

// call runs fn on the key's owner. In etcd mode, if the owner cannot be
// reached and the cluster's view has since changed (the owner restarted
// elsewhere, or the membership changed), it retries once on the new owner.
// In static mode an unreachable endpoint makes it try the next one, once
// around.
func call[T any](ctx context.Context, c *Client, key string, fn func(kvv1connect.KVServiceClient) (T, error)) (T, error) {
	var zero T
	tries := 2
	if c.watcher == nil {
		tries = len(c.cfg.endpoints)
	}
	var (
		err     error
		lastURL string
	)
	for attempt := range tries {
		node, _, url, oerr := c.ownerURL(key)
		if oerr != nil {
			return zero, oerr
		}
		if attempt > 0 && c.watcher != nil && url == lastURL {
			return zero, err // nothing changed: retrying would fail the same way
		}
		lastURL = url
		var out T
		if out, err = fn(node); err == nil || connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
			return out, err
		}
		if c.watcher == nil {
			c.next.Add(1)
		}
	}
	return zero, err
}

// Get reads a key.
func (c *Client) Get(ctx context.Context, key string) (*kvv1.GetResponse, error) {
	return call(ctx, c, key, func(n kvv1connect.KVServiceClient) (*kvv1.GetResponse, error) {
		resp, err := n.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key}))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	})
}

// Put writes a key; req carries the value, TTL and condition.
func (c *Client) Put(ctx context.Context, req *kvv1.PutRequest) (*kvv1.PutResponse, error) {
	return call(ctx, c, req.GetKey(), func(n kvv1connect.KVServiceClient) (*kvv1.PutResponse, error) {
		resp, err := n.Put(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	})
}

// Delete removes a key.
func (c *Client) Delete(ctx context.Context, req *kvv1.DeleteRequest) (*kvv1.DeleteResponse, error) {
	return call(ctx, c, req.GetKey(), func(n kvv1connect.KVServiceClient) (*kvv1.DeleteResponse, error) {
		resp, err := n.Delete(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	})
}

// Scan lists keys by prefix, one page per call. In etcd mode it asks every
// member for its keys after the cursor, in parallel, and merges them in key
// order; the page's cursor works on every node. A member that is down fails
// the scan rather than leave its keys silently out.
func (c *Client) Scan(ctx context.Context, req *kvv1.ScanRequest) (*kvv1.ScanResponse, error) {
	if c.watcher == nil {
		return call(ctx, c, "", func(n kvv1connect.KVServiceClient) (*kvv1.ScanResponse, error) {
			resp, err := n.Scan(ctx, connect.NewRequest(req))
			if err != nil {
				return nil, err
			}
			return resp.Msg, nil
		})
	}
	members := c.ring.Load().Members()
	pages := make([]*kvv1.ScanResponse, len(members))
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for i, id := range members {
		node, _, _, err := c.member(id)
		if err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("scan needs every node, and node %s is not live", id))
		}
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
	if err := errors.Join(errs...); err != nil {
		return nil, errs[slices.IndexFunc(errs, func(e error) bool { return e != nil })]
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = defaultScanLimit
	}
	return coord.MergeScan(pages, limit), nil
}

// defaultScanLimit is the page size of a Scan that asks for limit 0, as on
// the server.
const defaultScanLimit = 100

// Batch runs operations and returns one result per operation, in order. In
// etcd mode it sends each owner its operations in one call, all owners in
// parallel; operations whose owner is down fail alone.
func (c *Client) Batch(ctx context.Context, ops []*kvv1.Operation) ([]*kvv1.OperationResult, error) {
	if c.watcher == nil {
		return call(ctx, c, "", func(n kvv1connect.KVServiceClient) ([]*kvv1.OperationResult, error) {
			resp, err := n.Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: ops}))
			if err != nil {
				return nil, err
			}
			return resp.Msg.GetResults(), nil
		})
	}
	results := make([]*kvv1.OperationResult, len(ops))
	groups := map[string][]int{}
	nodes := map[string]kvv1connect.KVServiceClient{}
	for i, op := range ops {
		node, id, err := c.owner(coord.OperationKey(op))
		if err != nil {
			results[i] = errorResult(err)
			continue
		}
		groups[id] = append(groups[id], i)
		nodes[id] = node
	}
	var wg sync.WaitGroup
	for id, idx := range groups {
		wg.Go(func() {
			sub := make([]*kvv1.Operation, len(idx))
			for j, i := range idx {
				sub[j] = ops[i]
			}
			resp, err := nodes[id].Batch(ctx, connect.NewRequest(&kvv1.BatchRequest{Operations: sub}))
			for j, i := range idx {
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
	return results, nil
}

func errorResult(err error) *kvv1.OperationResult {
	return &kvv1.OperationResult{Result: &kvv1.OperationResult_Error{Error: &kvv1.OperationError{
		Code: connect.CodeOf(err).String(), Message: err.Error(),
	}}}
}
