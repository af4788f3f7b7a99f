package gateway

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
)

// Policies configures the gateway's protections; zero values take the
// rpcpolicy defaults, and a zero rate turns its limit off.
type Policies struct {
	RateLimit rpcpolicy.LimiterConfig
	Breaker   rpcpolicy.BreakerConfig
	// Singleflight shares one backend call among identical concurrent
	// calls to methods declared NO_SIDE_EFFECTS.
	Singleflight bool
	Flight       rpcpolicy.GroupConfig
}

// The policies as the proxy uses them, so that tests can see how the gateway
// applies them without depending on their implementation.
type (
	limiter interface {
		Handler(http.Handler) http.Handler
	}
	breakers interface {
		Do(instance string, fn func() error) error
		Allow(instance string) (done func(error), err error)
		Open(instance string) bool
		Forget(instance string)
		States() map[string]string
	}
	flight interface {
		Do(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, bool, error)
	}
)

func (g *Gateway) setupPolicies(reg prometheus.Registerer) error {
	p := g.cfg.Policies
	if p.RateLimit.Peers == nil {
		// Each gateway takes its share of the global rate from how many are
		// live in etcd.
		p.RateLimit.Peers = func() int { return max(int(g.gateways.Load()), 1) }
	}
	lim, err := rpcpolicy.NewLimiter(p.RateLimit, reg)
	if err != nil {
		return err
	}
	g.limiter = lim
	g.breakers = rpcpolicy.NewBreakers(p.Breaker, reg)
	if p.Singleflight {
		group, err := rpcpolicy.NewGroup(p.Flight, reg)
		if err != nil {
			return err
		}
		g.flight = group
	}
	return nil
}

// serveBreakers reports the state of every backend instance's breaker, for
// `flux cluster status`.
func (g *Gateway) serveBreakers(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(g.breakers.States())
}
