package rpcpolicy_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
)

func newGroup(t *testing.T, cfg rpcpolicy.GroupConfig) (*rpcpolicy.Group, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	g, err := rpcpolicy.NewGroup(cfg, reg)
	if err != nil {
		t.Fatalf("NewGroup: %v", err)
	}
	return g, reg
}

// waitJoined waits until n callers have joined g; Do counts a call only once
// it has joined the shared call, so this is when a blocked fn may go on.
func waitJoined(t *testing.T, reg *prometheus.Registry, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if v, _ := metricValue(t, reg, "flux_gateway_singleflight_calls_total", nil); int(v) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callers never joined", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// gate is a backend call that blocks until released and counts its runs.
type gate struct {
	runs    atomic.Int32
	release chan struct{}
}

func newGate() *gate { return &gate{release: make(chan struct{})} }

func (g *gate) call(ctx context.Context) (any, error) {
	g.runs.Add(1)
	select {
	case <-g.release:
		return "value", nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type result struct {
	v      any
	shared bool
	err    error
}

func TestSingleflightSharesOneCall(t *testing.T) {
	t.Parallel()
	g, reg := newGroup(t, rpcpolicy.GroupConfig{})
	backend := newGate()
	const callers = 16
	results := make(chan result, callers)
	for range callers {
		go func() {
			v, shared, err := g.Do(context.Background(), "Get/k1", backend.call)
			results <- result{v, shared, err}
		}()
	}
	waitJoined(t, reg, callers)
	close(backend.release)
	for range callers {
		r := <-results
		if r.err != nil || r.v != "value" || !r.shared {
			t.Errorf("got (%v, shared %v, %v), want (value, shared true, nil)", r.v, r.shared, r.err)
		}
	}
	if n := backend.runs.Load(); n != 1 {
		t.Errorf("backend calls: got %d, want 1", n)
	}
	if v, _ := metricValue(t, reg, "flux_gateway_singleflight_shared_total", nil); v != callers-1 {
		t.Errorf("shared metric: got %v, want %d", v, callers-1)
	}
}

func TestSingleflightCallerKeepsOwnDeadline(t *testing.T) {
	t.Parallel()
	g, reg := newGroup(t, rpcpolicy.GroupConfig{})
	backend := newGate()
	leader := make(chan result, 1)
	go func() {
		v, shared, err := g.Do(context.Background(), "Get/slow", backend.call)
		leader <- result{v, shared, err}
	}()
	waitJoined(t, reg, 1)

	// The backend is held until the impatient caller has returned, so it
	// returned on its own deadline, not on the shared call's completion.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, _, err := g.Do(ctx, "Get/slow", backend.call)
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Errorf("short deadline: got %v, want DeadlineExceeded", err)
	}
	close(backend.release)
	if r := <-leader; r.err != nil || r.v != "value" {
		t.Errorf("patient caller: got (%v, %v), want (value, nil)", r.v, r.err)
	}
	if n := backend.runs.Load(); n != 1 {
		t.Errorf("backend calls: got %d, want 1", n)
	}
	if v, _ := metricValue(t, reg, "flux_gateway_singleflight_left_total", nil); v != 1 {
		t.Errorf("left metric: got %v, want 1", v)
	}
}

type spanKey struct{}

func TestSingleflightCancelledLeaderDoesNotPoison(t *testing.T) {
	t.Parallel()
	g, reg := newGroup(t, rpcpolicy.GroupConfig{})
	backend := newGate()
	callCtx := make(chan context.Context, 1)
	call := func(ctx context.Context) (any, error) {
		select {
		case callCtx <- ctx:
		default:
		}
		return backend.call(ctx)
	}

	leaderCtx, cancelLeader := context.WithCancel(context.WithValue(context.Background(), spanKey{}, "span-1"))
	leader := make(chan error, 1)
	go func() {
		_, _, err := g.Do(leaderCtx, "Get/k", call)
		leader <- err
	}()
	waitJoined(t, reg, 1)
	follower := make(chan result, 1)
	go func() {
		v, shared, err := g.Do(context.Background(), "Get/k", call)
		follower <- result{v, shared, err}
	}()
	waitJoined(t, reg, 2)

	cancelLeader()
	if err := <-leader; connect.CodeOf(err) != connect.CodeCanceled {
		t.Errorf("cancelled leader: got %v, want Canceled", err)
	}
	shared := <-callCtx
	if err := shared.Err(); err != nil {
		t.Errorf("shared call's context after the leader left: got %v, want still live", err)
	}
	if got := shared.Value(spanKey{}); got != "span-1" {
		t.Errorf("shared call's context value: got %v, want the leader's span-1", got)
	}
	close(backend.release)
	if r := <-follower; r.err != nil || r.v != "value" {
		t.Errorf("follower: got (%v, %v), want (value, nil)", r.v, r.err)
	}
	// The next call finds nothing left behind and runs on its own.
	if v, shared, err := g.Do(context.Background(), "Get/k", call); err != nil || v != "value" || shared {
		t.Errorf("later call: got (%v, shared %v, %v), want (value, shared false, nil)", v, shared, err)
	}
	if n := backend.runs.Load(); n != 2 {
		t.Errorf("backend calls: got %d, want 2", n)
	}
}

func TestSingleflightDoesNotCacheErrors(t *testing.T) {
	t.Parallel()
	g, _ := newGroup(t, rpcpolicy.GroupConfig{})
	var runs atomic.Int32
	fail := func(context.Context) (any, error) {
		runs.Add(1)
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("backend down"))
	}
	if _, _, err := g.Do(context.Background(), "Get/k", fail); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("failing call: got %v, want Unavailable", err)
	}
	v, _, err := g.Do(context.Background(), "Get/k", func(context.Context) (any, error) {
		runs.Add(1)
		return "value", nil
	})
	if err != nil || v != "value" {
		t.Errorf("call after a failure: got (%v, %v), want (value, nil)", v, err)
	}
	if n := runs.Load(); n != 2 {
		t.Errorf("backend calls: got %d, want 2", n)
	}
}

func TestSingleflightCallTimeoutBoundsSharedCall(t *testing.T) {
	t.Parallel()
	g, _ := newGroup(t, rpcpolicy.GroupConfig{CallTimeout: 20 * time.Millisecond})
	hang := func(ctx context.Context) (any, error) {
		<-ctx.Done()
		return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	if _, _, err := g.Do(context.Background(), "Get/hang", hang); connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Errorf("hung backend: got %v, want DeadlineExceeded from the call timeout", err)
	}
}

func TestSingleflightFinishedContextSkipsCall(t *testing.T) {
	t.Parallel()
	g, _ := newGroup(t, rpcpolicy.GroupConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	_, _, err := g.Do(ctx, "Get/k", func(context.Context) (any, error) { called = true; return nil, nil })
	if called || connect.CodeOf(err) != connect.CodeCanceled {
		t.Errorf("cancelled caller: got called %v, err %v; want no call, Canceled", called, err)
	}
}

// TestSingleflightKeepsALongerDeadline: the bound on a shared call does not
// cut short a leader that allows longer.
func TestSingleflightKeepsALongerDeadline(t *testing.T) {
	t.Parallel()
	g, err := rpcpolicy.NewGroup(rpcpolicy.GroupConfig{CallTimeout: 50 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _, err = g.Do(ctx, "k", func(ctx context.Context) (any, error) {
		deadline, ok := ctx.Deadline()
		if !ok || time.Until(deadline) < 30*time.Second {
			return nil, errors.New("the shared call's deadline is shorter than the caller's")
		}
		return "v", nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
