package kvnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
)

// router decides where a request is served. A standalone node, or one that
// has not joined its cluster yet, serves everything itself; a clustered
// node forwards single-key requests to the key's owner and coordinates
// Batch and Scan across owners, so any node answers any request.
type router struct {
	self    string
	log     *slog.Logger
	cluster atomic.Pointer[cluster]
	// freezes are this node's promises, as a source of keys moving, not to
	// write them (see admit).
	freezes freezes

	drainMu sync.Mutex
	drainc  chan struct{} // closed when the node starts leaving; made on first use
}

func (r *router) join(c *cluster) { r.cluster.Store(c) }

func (r *router) logger() *slog.Logger { return r.log }

// stamp is the change log's Stamp: the epoch of the ring the node routes
// by, and whether the change is to a key the node does not own by it (a
// copy applied while keys move here, a key dropped after it moved away, or
// the expiry of either), which is recorded but never published.
func (r *router) stamp(key string) (int64, bool) {
	c := r.cluster.Load()
	if c == nil {
		return 0, false
	}
	v := c.view.Load()
	return v.epoch, v.ring.Owner(key) != r.self
}

// deregister makes the node not live in etcd while it keeps routing: calls
// in flight, and those that arrive before everyone has noticed, still reach
// their owners. Watch streams end here, as they never end on their own and
// would keep the API from draining; their clients resume elsewhere.
func (r *router) deregister(ctx context.Context) error {
	r.drain()
	if c := r.cluster.Load(); c != nil {
		return c.deregister(ctx)
	}
	return nil
}

// draining is closed when the node starts leaving.
func (r *router) draining() <-chan struct{} {
	r.drainMu.Lock()
	defer r.drainMu.Unlock()
	if r.drainc == nil {
		r.drainc = make(chan struct{})
	}
	return r.drainc
}

func (r *router) drain() {
	r.drainMu.Lock()
	defer r.drainMu.Unlock()
	if r.drainc == nil {
		r.drainc = make(chan struct{})
	}
	select {
	case <-r.drainc:
	default:
		close(r.drainc)
	}
}

// leave stops following the cluster; call it once the API has drained.
// Calls that outlived the drain keep routing by the last ring: falling back
// to serving every key here would write keys other nodes own.
func (r *router) leave() error {
	if c := r.cluster.Load(); c != nil {
		return c.close()
	}
	return nil
}

// beforeWrite is called before the node applies a write to key in its own
// store: a clustered node makes sure etcd records that the cluster holds
// data.
func (r *router) beforeWrite(ctx context.Context, key string) error {
	if c := r.cluster.Load(); c != nil {
		return c.markData(ctx, key)
	}
	return nil
}

// owns reports whether a clustered node owns key; a standalone node owns
// every key.
func (r *router) owns(key string) bool {
	c := r.cluster.Load()
	return c == nil || c.ring().Owner(key) == r.self
}

// coordinating returns the cluster when this node must route the request:
// it is clustered and the request did not come from a peer.
func (r *router) coordinating(h http.Header) *cluster {
	c := r.cluster.Load()
	if c == nil || h.Get(forwardedHeader) != "" {
		return nil
	}
	return c
}

// target returns nil when key is served here, or a client for its owner.
// A forwarded request for a key this node does not own means two nodes'
// rings disagree (membership is changing): it is refused, not served from
// the wrong store.
func (r *router) target(h http.Header, key string) (kvv1connect.KVServiceClient, error) {
	c := r.cluster.Load()
	if c == nil {
		return nil, nil
	}
	owner, client, err := c.owner(key)
	switch {
	case owner == r.self:
		return nil, nil
	case h.Get(forwardedHeader) != "":
		return nil, notOwner(r.self, owner, c.view.Load().epoch)
	default:
		return client, err
	}
}

// ownerOf names the member that owns key, for messages; "" when the node
// is not clustered.
func (r *router) ownerOf(key string) string {
	if c := r.cluster.Load(); c != nil {
		return c.ring().Owner(key)
	}
	return ""
}

// forward wraps msg for a peer, marking it as forwarded.
func forward[T any](self string, msg *T) *connect.Request[T] {
	req := connect.NewRequest(msg)
	req.Header().Set(forwardedHeader, self)
	return req
}

// remoteOps sends a Pipeline's operations for other nodes to their owners:
// one goroutine per owner keeps that owner's operations in arrival order
// (so operations on one key apply in order) and sends whatever has queued
// up as one forwarded Batch.
type remoteOps struct {
	self    string
	workers map[kvv1connect.KVServiceClient]chan remoteOp
	wg      sync.WaitGroup
}

type remoteOp struct {
	op   *kvv1.Operation
	done chan<- *kvv1.OperationResult
}

// maxForwardBatch bounds one forwarded Batch (the schema allows 1000).
const maxForwardBatch = 256

func newRemoteOps(self string) *remoteOps {
	return &remoteOps{self: self, workers: map[kvv1connect.KVServiceClient]chan remoteOp{}}
}

// send queues op for the owner behind client; its result arrives on done.
func (r *remoteOps) send(ctx context.Context, client kvv1connect.KVServiceClient, op *kvv1.Operation, done chan<- *kvv1.OperationResult) {
	ch, ok := r.workers[client]
	if !ok {
		ch = make(chan remoteOp, maxForwardBatch)
		r.workers[client] = ch
		r.wg.Go(func() { r.run(ctx, client, ch) })
	}
	ch <- remoteOp{op, done}
}

func (r *remoteOps) run(ctx context.Context, client kvv1connect.KVServiceClient, ch chan remoteOp) {
	for first := range ch {
		batch := []remoteOp{first}
	drain:
		for len(batch) < maxForwardBatch {
			select {
			case next, ok := <-ch:
				if !ok {
					break drain
				}
				batch = append(batch, next)
			default:
				break drain
			}
		}
		ops := make([]*kvv1.Operation, len(batch))
		for i, b := range batch {
			ops[i] = b.op
		}
		resp, err := client.Batch(ctx, forward(r.self, &kvv1.BatchRequest{Operations: ops}))
		for i, b := range batch {
			switch {
			case err != nil:
				b.done <- errorResult(err)
			case i < len(resp.Msg.GetResults()):
				b.done <- resp.Msg.GetResults()[i]
			default:
				b.done <- errorResult(connect.NewError(connect.CodeInternal, errors.New("owner answered too few results")))
			}
		}
	}
}

// close stops the workers once they have sent everything queued.
func (r *remoteOps) close() {
	for _, ch := range r.workers {
		close(ch)
	}
	r.wg.Wait()
}

// coordinateBatch splits a batch by owner: local operations run here, each
// owner gets one sub-batch, all in parallel. Operations on one key keep
// their order (they go to the same owner in one sub-batch); an operation
// whose owner is down fails alone.
func (h *handler) coordinateBatch(ctx context.Context, c *cluster, ops []*kvv1.Operation) ([]*kvv1.OperationResult, error) {
	results := make([]*kvv1.OperationResult, len(ops))
	var local []int
	remote := map[string][]int{}
	clients := map[string]kvv1connect.KVServiceClient{}
	for i, op := range ops {
		owner, client, err := c.owner(coord.OperationKey(op))
		switch {
		case owner == h.router.self || coord.OperationKey(op) == "":
			local = append(local, i)
		case err != nil:
			results[i] = errorResult(err)
		default:
			remote[owner] = append(remote[owner], i)
			clients[owner] = client
		}
	}
	var wg sync.WaitGroup
	for owner, idx := range remote {
		wg.Go(func() {
			sub := make([]*kvv1.Operation, len(idx))
			for j, i := range idx {
				sub[j] = ops[i]
			}
			resp, err := clients[owner].Batch(ctx, forward(h.router.self, &kvv1.BatchRequest{Operations: sub}))
			for j, i := range idx {
				switch {
				case err != nil:
					results[i] = errorResult(err)
				case j < len(resp.Msg.GetResults()):
					results[i] = resp.Msg.GetResults()[j]
				default:
					results[i] = errorResult(connect.NewError(connect.CodeInternal, fmt.Errorf("node %s answered too few results", owner)))
				}
			}
		})
	}
	var last int64
	applied := make([]bool, len(ops))
	for _, i := range local {
		if err := h.reserveFor(ctx, ops[i]); err != nil {
			results[i] = errorResult(err)
			continue
		}
		var rev int64
		results[i], rev = h.applyAdmitted(ops[i])
		applied[i] = rev > 0
		last = max(last, rev)
	}
	waitErr := h.dur.Wait(ctx, last)
	wg.Wait()
	if waitErr != nil {
		// Only this node's writes are in doubt: the other owners answered
		// for theirs, and some of them may have applied them.
		uerr := unconfirmedError(waitErr)
		for i := range ops {
			if applied[i] {
				results[i] = errorResult(uerr)
			}
		}
	}
	return results, nil
}

// coordinateScan asks every member for a page after the cursor and merges
// them in key order (coord.MergeScan). A member
// that is down makes the scan fail: a page with some nodes' keys silently
// missing would be wrong.
func (h *handler) coordinateScan(ctx context.Context, c *cluster, msg *kvv1.ScanRequest, limit int) (*kvv1.ScanResponse, error) {
	members := c.ring().Members()
	pages := make([]*kvv1.ScanResponse, len(members))
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	// Every member must be live before any is asked.
	clients := make([]kvv1connect.KVServiceClient, len(members))
	for i, id := range members {
		if id == h.router.self {
			continue
		}
		client, err := c.peer(id)
		if err != nil {
			return nil, coord.NotExecuted(coord.ReasonOwnerNotLive, id, fmt.Errorf("scan needs every node, and node %s is not live", id))
		}
		clients[i] = client
	}
	for i, id := range members {
		if id == h.router.self {
			pages[i], errs[i] = h.scanLocal(msg, limit)
			continue
		}
		client := clients[i]
		wg.Go(func() {
			resp, err := client.Scan(ctx, forward(h.router.self, msg))
			if err != nil {
				errs[i] = err
				return
			}
			pages[i] = resp.Msg
		})
	}
	wg.Wait()
	for i := range pages {
		if errs[i] != nil {
			return nil, errs[i]
		}
	}
	resp, err := coord.MergeScan(pages, limit)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return resp, nil
}
