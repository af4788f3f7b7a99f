package rpcpolicy_test

import (
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
)

const coolDown = 50 * time.Millisecond

func newBreakers(t *testing.T) (*rpcpolicy.Breakers, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	b := rpcpolicy.NewBreakers(rpcpolicy.BreakerConfig{ConsecutiveFailures: 3, OpenTimeout: coolDown}, reg)
	return b, reg
}

func failWith(code connect.Code) func() error {
	return func() error { return connect.NewError(code, errors.New("backend says no")) }
}

// waitHalfOpen polls until the cool-down has moved instance's breaker to
// half-open; polling rather than sleeping keeps the test free of timing bets.
func waitHalfOpen(t *testing.T, b *rpcpolicy.Breakers, instance string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); b.State(instance) != rpcpolicy.StateHalfOpen; {
		if time.Now().After(deadline) {
			t.Fatalf("breaker of %s: got %s after the cool-down, want half-open", instance, b.State(instance))
		}
		time.Sleep(coolDown / 5)
	}
}

func TestBreakerOpensFailsFastAndRecovers(t *testing.T) {
	t.Parallel()
	b, reg := newBreakers(t)
	const inst = "node-a:7701"
	for i := range 3 {
		if err := b.Do(inst, failWith(connect.CodeUnavailable)); connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("failure #%d: got %v, want the backend's Unavailable", i, err)
		}
	}
	if got := b.State(inst); got != rpcpolicy.StateOpen || !b.Open(inst) {
		t.Fatalf("after 3 failures: got %s (Open %v), want open", got, b.Open(inst))
	}
	if v, _ := metricValue(t, reg, "flux_gateway_breaker_state", map[string]string{"instance": inst}); v != 2 {
		t.Errorf("state gauge while open: got %v, want 2", v)
	}

	called := false
	err := b.Do(inst, func() error { called = true; return nil })
	if called {
		t.Error("open breaker called fn, want fail fast")
	}
	if connect.CodeOf(err) != connect.CodeUnavailable || !errors.Is(err, rpcpolicy.ErrBreakerOpen) {
		t.Errorf("open breaker: got %v, want Unavailable wrapping ErrBreakerOpen", err)
	}

	waitHalfOpen(t, b, inst)
	if b.Open(inst) {
		t.Error("half-open breaker reports Open, want it offered for a probe")
	}
	if v, _ := metricValue(t, reg, "flux_gateway_breaker_state", map[string]string{"instance": inst}); v != 1 {
		t.Errorf("state gauge while half-open: got %v, want 1", v)
	}
	if err := b.Do(inst, func() error { return nil }); err != nil {
		t.Fatalf("probe: got %v, want nil", err)
	}
	if got := b.State(inst); got != rpcpolicy.StateClosed {
		t.Errorf("after a successful probe: got %s, want closed", got)
	}
	if v, _ := metricValue(t, reg, "flux_gateway_breaker_state", map[string]string{"instance": inst}); v != 0 {
		t.Errorf("state gauge once closed: got %v, want 0", v)
	}
	for _, tr := range []struct{ from, to string }{{"closed", "open"}, {"open", "half-open"}, {"half-open", "closed"}} {
		labels := map[string]string{"instance": inst, "from": tr.from, "to": tr.to}
		if v, _ := metricValue(t, reg, "flux_gateway_breaker_transitions_total", labels); v != 1 {
			t.Errorf("transitions %s -> %s: got %v, want 1", tr.from, tr.to, v)
		}
	}
}

func TestBreakerFailedProbeReopens(t *testing.T) {
	t.Parallel()
	b, _ := newBreakers(t)
	const inst = "node-b:7701"
	for range 3 {
		_ = b.Do(inst, failWith(connect.CodeDeadlineExceeded))
	}
	waitHalfOpen(t, b, inst)
	if err := b.Do(inst, failWith(connect.CodeInternal)); errors.Is(err, rpcpolicy.ErrBreakerOpen) {
		t.Fatalf("probe: got %v, want the call to go through", err)
	}
	if got := b.State(inst); got != rpcpolicy.StateOpen {
		t.Errorf("after a failed probe: got %s, want open", got)
	}
}

func TestBreakerCountsOnlyBackendFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		code connect.Code
		want string
	}{
		{connect.CodeUnavailable, rpcpolicy.StateOpen},
		{connect.CodeDeadlineExceeded, rpcpolicy.StateOpen},
		{connect.CodeInternal, rpcpolicy.StateOpen},
		{connect.CodeInvalidArgument, rpcpolicy.StateClosed},
		{connect.CodeNotFound, rpcpolicy.StateClosed},
		{connect.CodeFailedPrecondition, rpcpolicy.StateClosed},
		{connect.CodeResourceExhausted, rpcpolicy.StateClosed},
		{connect.CodeCanceled, rpcpolicy.StateClosed},
	}
	b, _ := newBreakers(t)
	for i, tt := range tests {
		inst := tt.code.String()
		for range 10 {
			_ = b.Do(inst, failWith(tt.code))
		}
		if got := b.State(inst); got != tt.want {
			t.Errorf("#%d: after 10 x %v: got %s, want %s", i, tt.code, got, tt.want)
		}
	}
	// An application error between backend failures shows the backend is up,
	// so the failures are no longer consecutive.
	const inst = "mixed"
	for _, code := range []connect.Code{connect.CodeUnavailable, connect.CodeUnavailable, connect.CodeInvalidArgument, connect.CodeUnavailable, connect.CodeUnavailable} {
		_ = b.Do(inst, failWith(code))
	}
	if got := b.State(inst); got != rpcpolicy.StateClosed {
		t.Errorf("interrupted failures: got %s, want closed", got)
	}
}

func TestBreakerAllowHoldsHalfOpenSlotUntilDone(t *testing.T) {
	t.Parallel()
	b, _ := newBreakers(t)
	const inst = "node-c:7701"
	for range 3 {
		done, err := b.Allow(inst)
		if err != nil {
			t.Fatalf("Allow while closed: %v", err)
		}
		done(connect.NewError(connect.CodeUnavailable, errors.New("stream broke")))
	}
	if _, err := b.Allow(inst); !errors.Is(err, rpcpolicy.ErrBreakerOpen) {
		t.Fatalf("Allow while open: got %v, want ErrBreakerOpen", err)
	}
	waitHalfOpen(t, b, inst)
	probeDone, err := b.Allow(inst)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	// One probe at a time: a second stream must wait for the first's verdict.
	if _, err := b.Allow(inst); !errors.Is(err, rpcpolicy.ErrBreakerOpen) {
		t.Errorf("second stream while probing: got %v, want ErrBreakerOpen", err)
	}
	probeDone(nil)
	if got := b.State(inst); got != rpcpolicy.StateClosed {
		t.Errorf("after the probe stream succeeded: got %s, want closed", got)
	}
}

func TestBreakerPanickingCallCountsAsFailure(t *testing.T) {
	t.Parallel()
	b, _ := newBreakers(t)
	const inst = "node-d:7701"
	for range 3 {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("Do swallowed the panic, want it to go on")
				}
			}()
			_ = b.Do(inst, func() error { panic("boom") })
		}()
	}
	if got := b.State(inst); got != rpcpolicy.StateOpen {
		t.Errorf("after 3 panics: got %s, want open", got)
	}
}

func TestBreakerForget(t *testing.T) {
	t.Parallel()
	b, reg := newBreakers(t)
	const gone, stays = "node-e:7701", "node-f:7701"
	for range 3 {
		_ = b.Do(gone, failWith(connect.CodeUnavailable))
	}
	_ = b.Do(stays, func() error { return nil })
	if got, want := b.States(), map[string]string{gone: "open", stays: "closed"}; len(got) != 2 || got[gone] != want[gone] || got[stays] != want[stays] {
		t.Fatalf("States: got %v, want %v", got, want)
	}
	b.Forget(gone)
	if got := b.States(); len(got) != 1 || got[stays] != rpcpolicy.StateClosed {
		t.Errorf("States after Forget: got %v, want only %s closed", got, stays)
	}
	if got := b.State(gone); got != rpcpolicy.StateClosed {
		t.Errorf("forgotten instance: got %s, want closed", got)
	}
	for _, name := range []string{"flux_gateway_breaker_state", "flux_gateway_breaker_transitions_total"} {
		if _, ok := metricValue(t, reg, name, map[string]string{"instance": gone}); ok {
			t.Errorf("%s still has a series for the forgotten instance", name)
		}
	}
	if err := b.Do(gone, func() error { return nil }); err != nil {
		t.Errorf("returning instance: got %v, want a fresh closed breaker", err)
	}
}
