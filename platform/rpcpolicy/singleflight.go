package rpcpolicy

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// GroupConfig configures a Group.
type GroupConfig struct {
	CallTimeout time.Duration // bound on a shared call, which outlives the callers that leave early; 0 = 10s
}

// Group lets identical concurrent calls share one execution, for methods
// without side effects. Unlike a bare singleflight.Group, each caller keeps
// its own deadline, and the caller that happens to start the shared call
// (the leader) cannot cancel it for the others by leaving. Nothing is cached:
// a call that starts after the shared one has finished runs again, so an
// error reaches only the callers that were waiting for it.
type Group struct {
	sf          singleflight.Group
	callTimeout time.Duration

	calls  prometheus.Counter
	shared prometheus.Counter
	left   prometheus.Counter
}

// NewGroup returns a Group whose metrics are registered on reg (none when reg
// is nil). It fails if reg already holds metrics of the same names.
func NewGroup(cfg GroupConfig, reg prometheus.Registerer) (*Group, error) {
	g := &Group{
		callTimeout: cfg.CallTimeout,
		calls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_gateway_singleflight_calls_total",
			Help: "Calls offered for sharing with identical concurrent calls.",
		}),
		shared: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_gateway_singleflight_shared_total",
			Help: "Calls answered by a backend call that another, identical call started.",
		}),
		left: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_gateway_singleflight_left_total",
			Help: "Calls whose own deadline or cancellation ended them while the shared call went on.",
		}),
	}
	if g.callTimeout <= 0 {
		g.callTimeout = 10 * time.Second
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{g.calls, g.shared, g.left} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("singleflight: register metrics: %w", err)
			}
		}
	}
	return g, nil
}

// Do returns the result of fn for key, sharing one execution of fn among the
// callers that ask for the same key while it runs; shared reports whether the
// result went to more than one caller.
//
// key must capture everything that can change the answer: the method, the
// request message and any header the backend reads, such as credentials.
//
// fn runs with a context that keeps the values of the first caller's ctx
// (trace spans among them) but not its cancellation, bounded instead by the
// group's CallTimeout. Each caller waits only as long as its own ctx: when it
// ends first, Do returns a DeadlineExceeded or Canceled Connect error while
// fn goes on for the others.
//
// A result given to several callers is the same value for all of them: they
// must treat it as read-only, and clone it before any change. fn must not
// panic: singleflight re-panics in a goroutine where no one can recover it.
func (g *Group) Do(ctx context.Context, key string, fn func(ctx context.Context) (any, error)) (v any, shared bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, false, contextError(err)
	}
	// Set only by the goroutine running fn, and read only after the result
	// arrives on the channel, which orders the two.
	var led bool
	results := g.sf.DoChan(key, func() (any, error) {
		led = true
		// The leader's deadline, if later than the bound, still holds: a
		// caller that allows a long call must not see it cut short.
		timeout := g.callTimeout
		if deadline, ok := ctx.Deadline(); ok {
			timeout = max(timeout, time.Until(deadline))
		}
		callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		return fn(callCtx)
	})
	// Counted once joined, so the count never runs ahead of the group's state.
	g.calls.Inc()
	select {
	case r := <-results:
		if !led {
			g.shared.Inc()
		}
		return r.Val, r.Shared, r.Err
	case <-ctx.Done():
		g.left.Inc()
		return nil, false, contextError(ctx.Err())
	}
}
