package rpcpolicy

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// ErrBreakerOpen is wrapped in the Unavailable error a Breakers returns when it
// refuses a call, so the caller can tell that no request left the gateway
// (and may safely try another instance, whatever the method's side effects).
var ErrBreakerOpen = errors.New("circuit breaker open")

// Breaker states, as State and States report them.
const (
	StateClosed   = "closed"
	StateHalfOpen = "half-open"
	StateOpen     = "open"
)

// BreakerConfig configures the circuit breaker of every backend instance.
type BreakerConfig struct {
	ConsecutiveFailures uint32        // failures in a row that open a closed breaker; 0 = 5
	OpenTimeout         time.Duration // how long an open breaker refuses calls before it lets probes through; 0 = 5s
	HalfOpenMaxRequests uint32        // probes let through while half-open; as many successes in a row close it; 0 = 1
}

// Breakers keeps a circuit breaker per backend instance, created on first use.
// Only Unavailable, DeadlineExceeded and Internal count as failures: any other
// answer, including application errors such as NotFound or InvalidArgument,
// shows the backend is up. Canceled counts as neither, since it says only that
// the caller went away. Breakers is safe for concurrent use.
type Breakers struct {
	settings gobreaker.Settings

	mu     sync.RWMutex
	byName map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]

	stateDesc   *prometheus.Desc
	transitions *prometheus.CounterVec
}

// NewBreakers returns an empty set of breakers whose metrics are registered on
// reg (none when reg is nil). Like promauto, it panics if reg already holds
// metrics of the same names, a wiring bug that no caller can recover from.
func NewBreakers(cfg BreakerConfig, reg prometheus.Registerer) *Breakers {
	failures := cfg.ConsecutiveFailures
	if failures == 0 {
		failures = 5
	}
	openTimeout := cfg.OpenTimeout
	if openTimeout <= 0 {
		openTimeout = 5 * time.Second
	}
	b := &Breakers{
		byName: make(map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]),
		stateDesc: prometheus.NewDesc("flux_gateway_breaker_state",
			"Circuit breaker state per backend instance: 0 closed, 1 half-open, 2 open.",
			[]string{"instance"}, nil),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flux_gateway_breaker_transitions_total",
			Help: "Circuit breaker state changes per backend instance.",
		}, []string{"instance", "from", "to"}),
	}
	b.settings = gobreaker.Settings{
		MaxRequests:  max(1, cfg.HalfOpenMaxRequests),
		Timeout:      openTimeout,
		ReadyToTrip:  func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
		IsSuccessful: func(err error) bool { return !isBackendFailure(err) },
		IsExcluded:   func(err error) bool { return codeOf(err) == connect.CodeCanceled },
	}
	if reg != nil {
		reg.MustRegister(stateCollector{b}, b.transitions)
	}
	return b
}

func isBackendFailure(err error) bool {
	switch codeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeInternal:
		return true
	default:
		return false
	}
}

// Do calls fn through instance's breaker. When the breaker is open, or
// half-open with its probes already in flight, Do returns an Unavailable error
// wrapping ErrBreakerOpen without calling fn. Otherwise it returns fn's error
// unchanged, after counting it. A panic in fn counts as a failure and is not
// recovered.
func (b *Breakers) Do(instance string, fn func() error) error {
	done, err := b.Allow(instance)
	if err != nil {
		return err
	}
	// Without this, a panicking probe would hold the half-open slot forever and
	// the breaker would never close again.
	reported := false
	defer func() {
		if !reported {
			done(errPanicked)
		}
	}()
	err = fn()
	reported = true
	done(err)
	return err
}

var errPanicked = connect.NewError(connect.CodeInternal, errors.New("backend call panicked"))

// Allow asks instance's breaker for permission to start a call whose outcome
// is known only later, such as a stream. If refused, it returns an Unavailable
// error wrapping ErrBreakerOpen. Otherwise the caller must call done exactly
// once with the call's final error (nil on success); a call that never
// reports would hold a half-open breaker's probe slot forever.
func (b *Breakers) Allow(instance string) (done func(err error), err error) {
	done, err = b.breaker(instance).Allow()
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("backend %s: %w", instance, ErrBreakerOpen))
	}
	return done, nil
}

// State returns instance's breaker state: StateClosed, StateHalfOpen or
// StateOpen. An instance never called through is closed.
func (b *Breakers) State(instance string) string {
	b.mu.RLock()
	cb, ok := b.byName[instance]
	b.mu.RUnlock()
	if !ok {
		return StateClosed
	}
	return stateName(cb.State())
}

// States returns the state of every instance's breaker, by instance.
func (b *Breakers) States() map[string]string {
	states := make(map[string]string)
	for name, cb := range b.snapshot() {
		states[name] = stateName(cb.State())
	}
	return states
}

// Open reports whether instance's breaker refuses calls, so that round-robin
// can pass over it. Once the cool-down has passed the breaker is half-open
// and Open is false, which lets the next call probe the instance.
func (b *Breakers) Open(instance string) bool {
	return b.State(instance) == StateOpen
}

// Forget drops instance's breaker and its metrics, for an instance that has
// left. Calls already in flight report to the dropped breaker, harmlessly; if
// the instance returns, it starts with a closed breaker.
func (b *Breakers) Forget(instance string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.byName, instance)
	b.transitions.DeletePartialMatch(prometheus.Labels{"instance": instance})
}

func (b *Breakers) breaker(instance string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	b.mu.RLock()
	cb, ok := b.byName[instance]
	b.mu.RUnlock()
	if ok {
		return cb
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if cb, ok := b.byName[instance]; ok {
		return cb
	}
	settings := b.settings
	settings.Name = instance
	// gobreaker reports only the name; the closure tells this breaker apart
	// from one created for the same name after a Forget. It never runs before
	// cb is assigned: state changes happen only in calls on cb.
	settings.OnStateChange = func(name string, from, to gobreaker.State) {
		b.onStateChange(name, cb, from, to)
	}
	cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](settings)
	b.byName[instance] = cb
	return cb
}

// snapshot copies the map so that breakers are queried without b.mu held:
// gobreaker calls onStateChange, which takes b.mu, with its own lock held.
func (b *Breakers) snapshot() map[string]*gobreaker.TwoStepCircuitBreaker[struct{}] {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return maps.Clone(b.byName)
}

func (b *Breakers) onStateChange(instance string, cb *gobreaker.TwoStepCircuitBreaker[struct{}], from, to gobreaker.State) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	// A forgotten breaker can still change state through calls in flight; its
	// series must not come back.
	if b.byName[instance] != cb {
		return
	}
	b.transitions.WithLabelValues(instance, stateName(from), stateName(to)).Inc()
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateOpen:
		return StateOpen
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	default:
		return StateClosed
	}
}

// stateCollector reports breaker states at scrape time rather than from
// state-change callbacks: gobreaker moves from open to half-open lazily, on
// the next look, and a scrape is such a look.
type stateCollector struct{ b *Breakers }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.b.stateDesc }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	for name, cb := range c.b.snapshot() {
		var v float64
		switch cb.State() {
		case gobreaker.StateHalfOpen:
			v = 1
		case gobreaker.StateOpen:
			v = 2
		}
		ch <- prometheus.MustNewConstMetric(c.b.stateDesc, prometheus.GaugeValue, v, name)
	}
}
