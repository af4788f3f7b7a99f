package client

import (
	"context"
	"time"

	"connectrpc.com/connect"

	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
)

// viewWait bounds how long a request refused because the client's view is
// behind waits for the view to catch up. Membership changes reach every
// watcher within one etcd round trip; a view still unchanged after this
// long is not about to change, and the caller is better told.
const viewWait = time.Second

// call runs fn on the key's owner, or in static mode on the endpoints in
// turn, and sends it again when the retry rule in the package
// documentation allows it; write says which half of the rule applies.
func call[T any](ctx context.Context, c *Client, key string, write bool, fn func(kvv1connect.KVServiceClient) (T, error)) (T, error) {
	if c.watcher == nil {
		return callStatic(ctx, c, write, fn)
	}
	var zero T
	start := time.Now()
	for attempt := 0; ; attempt++ {
		v := c.view.Load()
		node, _, err := c.owner(v, key)
		if err != nil {
			return zero, err
		}
		out, err := fn(node)
		if err == nil {
			return out, nil
		}
		if !c.mayRetry(ctx, v, err, write, attempt, start) {
			return zero, err
		}
	}
}

// callStatic runs fn on each static endpoint in turn, from the shared
// start, until one answers or the retry rule stops it.
func callStatic[T any](ctx context.Context, c *Client, write bool, fn func(kvv1connect.KVServiceClient) (T, error)) (T, error) {
	var (
		zero T
		err  error
	)
	eps := c.cfg.endpoints
	n := uint64(len(eps))
	start := c.start.Load()
	for i := range n {
		at := (start + i) % n
		var out T
		if out, err = fn(c.node(eps[at])); err == nil {
			return out, nil
		}
		if connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
			return zero, err
		}
		c.start.CompareAndSwap(at, (at+1)%n)
		if write && !coord.WasNotExecuted(err) {
			return zero, err
		}
	}
	return zero, err
}

// mayRetry reports whether a request routed by view v that failed with err
// may be sent again on a newer view. It waits for one, within viewWait, ctx
// and the client's life, when err says that v is behind the cluster's.
//
// While keys move between nodes a request may be refused several times
// (MOVING while its key is frozen, then NOT_OWNER from a node that has not
// seen the new ring yet), so those refusals are retried until
// coord.RerouteBudget has passed since start; any other reason is retried
// once.
func (c *Client) mayRetry(ctx context.Context, v *view, err error, write bool, attempt int, start time.Time) bool {
	if connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
		return false
	}
	if write && !coord.WasNotExecuted(err) {
		return false
	}
	reason := coord.Reason(err)
	moving := reason == coord.ReasonMoving || reason == coord.ReasonNotOwner
	if attempt > 0 && (!moving || time.Since(start) > coord.RerouteBudget) {
		return false
	}
	select {
	case <-v.changed:
		return true
	default:
	}
	wait := viewWait
	switch {
	case reason == coord.ReasonMoving:
		// The key's owner is right; it takes writes again shortly.
		wait = coord.MovingBackoff(attempt)
	case reason == coord.ReasonNotOwner && coord.Epoch(err) > 0 && coord.Epoch(err) <= v.snap.Epoch():
		// The node that refused is the one behind: give it a moment to see
		// the ring this client already routes by.
		wait = coord.MovingBackoff(attempt)
	case !viewBehind(err):
		return false
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-v.changed:
		return true
	case <-timer.C:
		// Still the same view: worth another try only while keys move,
		// where either side may be the one behind.
		return moving
	case <-ctx.Done():
	case <-c.stopc:
	}
	return false
}

// viewBehind reports whether a node refused the request because its ring
// or its live nodes differ from the client's: the owner it computed is not
// the one the client sent the request to, or is not live. The client's view
// will catch up; a refusal for any other reason may not change with it.
func viewBehind(err error) bool {
	switch coord.Reason(err) {
	case coord.ReasonNotOwner, coord.ReasonOwnerNotLive:
		return true
	}
	return false
}
