package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/dynamicpb"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
	"github.com/fluxkv/fluxkv/services/gateway"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestRateLimit: a burst of three times the bucket gets ResourceExhausted,
// with a retry hint, for what the bucket does not hold; a steady load at
// three times the rate is admitted at the rate.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	// Small enough that a loaded 2-core machine sends 3x of it with ease.
	const (
		rate   = 50.0
		burst  = 50
		steady = 2 * time.Second
	)
	endpoint := startEtcd(t)
	startEcho(t, "echo-1", "127.0.0.1:0").register(t, etcdClient(t, endpoint))
	// Registered before the gateway starts, so the gateway serves the echo
	// service from its start and no probe spends the bucket.
	gw := startGateway(t, gateway.Config{
		Etcd:     []string{endpoint},
		Policies: gateway.Policies{RateLimit: rpcpolicy.LimiterConfig{GlobalRate: rate, GlobalBurst: burst}},
	})
	clients := make([]*connect.Client[dynamicpb.Message, dynamicpb.Message], len(protocols))
	for i, p := range protocols {
		clients[i] = echoClient(t, gw.APIURL(), echoProcedure, p.opts...)
	}
	ctx := callCtx(t)
	call := func(i int) error {
		_, err := clients[i%len(clients)].CallUnary(ctx, connect.NewRequest(echoRequest("", "x", 0)))
		return err
	}

	// The burst, all at once.
	var (
		start    = make(chan struct{})
		wg       sync.WaitGroup
		accepted atomic.Int64
		refused  atomic.Int64
		hinted   atomic.Int64
	)
	for i := range 3 * burst {
		wg.Go(func() {
			<-start
			err := call(i)
			switch codeOf(err) {
			case codeOK:
				accepted.Add(1)
			case connect.CodeResourceExhausted:
				refused.Add(1)
				if hasRetryInfo(err) {
					hinted.Add(1)
				}
			default:
				t.Errorf("burst call #%d: got %v, want OK or ResourceExhausted", i, err)
			}
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(began)
	// The bucket holds burst tokens and refills at rate while the burst runs.
	maxAccepted := int64(burst + math.Ceil(rate*took.Seconds()) + 1)
	if got := accepted.Load(); got < burst || got > maxAccepted {
		t.Errorf("burst of %d in %v: accepted %d, want %d to %d", 3*burst, took, got, burst, maxAccepted)
	}
	if got := refused.Load(); got != 3*burst-accepted.Load() || got == 0 {
		t.Errorf("burst of %d: refused %d with ResourceExhausted, want the %d not accepted", 3*burst, got, 3*burst-accepted.Load())
	}
	if hinted.Load() != refused.Load() {
		t.Errorf("%d of %d refusals carry a RetryInfo hint, want all", hinted.Load(), refused.Load())
	}

	// The steady load at three times the rate. The bucket may hold a few
	// tokens at first; from the first refusal on it is empty, so what it
	// admits after that is what it refills: the rate.
	type outcome struct {
		sent time.Time
		ok   bool
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
	)
	tick := time.NewTicker(time.Second / (3 * rate))
	for i, end := 0, time.Now().Add(steady); time.Now().Before(end); i++ {
		<-tick.C
		wg.Go(func() {
			sent := time.Now()
			err := call(i)
			if code := codeOf(err); code != codeOK && code != connect.CodeResourceExhausted {
				t.Errorf("steady call #%d: got %v, want OK or ResourceExhausted", i, err)
			}
			mu.Lock()
			outcomes = append(outcomes, outcome{sent, err == nil})
			mu.Unlock()
		})
	}
	tick.Stop()
	wg.Wait()
	slices.SortFunc(outcomes, func(a, b outcome) int { return a.sent.Compare(b.sent) })
	first := slices.IndexFunc(outcomes, func(o outcome) bool { return !o.ok })
	if first < 0 {
		t.Fatalf("no call of %d refused at 3x the rate", len(outcomes))
	}
	window := outcomes[len(outcomes)-1].sent.Sub(outcomes[first].sent)
	admitted := 0
	for _, o := range outcomes[first+1:] {
		if o.ok {
			admitted++
		}
	}
	offered := float64(len(outcomes)) / steady.Seconds()
	got := float64(admitted) / window.Seconds()
	t.Logf("steady run: offered %.0f/s, admitted %d in %v = %.1f/s (limit %.0f/s)", offered, admitted, window, got, rate)
	if offered < 1.5*rate {
		t.Fatalf("the test offered only %.0f calls/s, want well over the limit of %.0f/s", offered, rate)
	}
	if math.Abs(got-rate) > 0.1*rate {
		t.Errorf("admitted %.1f calls/s at 3x the limit, want %.0f ± 10%%", got, rate)
	}
	if v := metricValue(t, gw.AdminURL(), "flux_gateway_ratelimit_refused_total", `reason="global"`); v < float64(refused.Load()) {
		t.Errorf("refusals metric: got %v, want at least the burst's %d", v, refused.Load())
	}
}

func hasRetryInfo(err error) bool {
	var connectErr *connect.Error
	if !errors.As(err, &connectErr) {
		return false
	}
	for _, d := range connectErr.Details() {
		if v, derr := d.Value(); derr == nil {
			if _, ok := v.(*errdetails.RetryInfo); ok {
				return true
			}
		}
	}
	return false
}

// holeListener takes a dead backend's address: it accepts connections and
// closes them at once, counting them, so a test sees whether anything still
// tries the address.
type holeListener struct {
	ln       net.Listener
	accepted atomic.Int64
	done     chan struct{}
}

func listenHole(t *testing.T, addr string) *holeListener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &holeListener{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			_ = conn.Close()
		}
	}()
	t.Cleanup(h.close)
	return h
}

func (h *holeListener) close() {
	_ = h.ln.Close()
	<-h.done
}

func breakerStates(t *testing.T, adminURL string) map[string]string {
	t.Helper()
	resp, err := http.Get(adminURL + "/breakers")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	states := map[string]string{}
	if err := json.NewDecoder(resp.Body).Decode(&states); err != nil {
		t.Fatal(err)
	}
	return states
}

// TestBreaker: a backend that dies while still registered opens its breaker
// after the configured failures; calls then fail fast without trying its
// address; once it is back, the half-open probe closes the breaker.
func TestBreaker(t *testing.T) {
	t.Parallel()
	const failures = 3
	endpoint := startEtcd(t)
	echo := startEcho(t, "echo-1", "127.0.0.1:0")
	// The registration outlives the server: the gateway keeps routing to the
	// instance, as it does to a process that hangs or crashed a moment ago.
	echo.register(t, etcdClient(t, endpoint))
	gw := startGateway(t, gateway.Config{
		Etcd: []string{endpoint},
		// Long enough that the fail-fast checks run while it is open even on a
		// loaded machine; short enough to wait for.
		Policies: gateway.Policies{Breaker: rpcpolicy.BreakerConfig{ConsecutiveFailures: failures, OpenTimeout: time.Second}},
	})
	const instance = echoServiceName + "/echo-1"
	client := echoClient(t, gw.APIURL(), echoProcedure)
	call := func(key string) error {
		_, err := client.CallUnary(callCtx(t), connect.NewRequest(echoRequest(key, "x", 0)))
		return err
	}
	if err := call("k"); err != nil {
		t.Fatalf("call while the backend is up: %v", err)
	}
	if got := breakerStates(t, gw.AdminURL())[instance]; got != rpcpolicy.StateClosed {
		t.Fatalf("breaker of a healthy backend: got %q, want closed", got)
	}

	echo.stop()
	hole := listenHole(t, echo.addr)
	for i := range failures {
		if err := call("k"); connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("call #%d to the dead backend: got %v, want Unavailable", i, err)
		}
	}
	if got := breakerStates(t, gw.AdminURL())[instance]; got != rpcpolicy.StateOpen {
		t.Fatalf("after %d failures: breaker %q, want open", failures, got)
	}
	if got := metricValue(t, gw.AdminURL(), "flux_gateway_breaker_state", `instance="`+instance+`"`); got != 2 {
		t.Errorf("breaker state metric: got %v, want 2 (open)", got)
	}
	tried := hole.accepted.Load()
	if tried == 0 {
		t.Fatal("the failing calls never reached the dead address: the hole proves nothing")
	}
	// Shard-keyed calls have one right instance and are refused by its
	// breaker; round-robin calls find no instance whose breaker lets them.
	for i, key := range []string{"k", "other", ""} {
		err := call(key)
		if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "circuit") {
			t.Errorf("#%d: call with key %q while open: got %v, want Unavailable naming the open circuit", i, key, err)
		}
	}
	if got := hole.accepted.Load(); got != tried {
		t.Errorf("calls while the breaker is open reached the dead address %d times, want none", got-tried)
	}

	// Back on the same address: after the cool-down a probe goes through and
	// closes the breaker.
	hole.close()
	echo = startEcho(t, "echo-1", echo.addr)
	waitUntil(t, "a call to the recovered backend to succeed", func() bool { return call("k") == nil })
	if got := breakerStates(t, gw.AdminURL())[instance]; got != rpcpolicy.StateClosed {
		t.Errorf("after a successful probe: breaker %q, want closed", got)
	}
	for i := range 5 {
		if err := call(fmt.Sprint(i)); err != nil {
			t.Errorf("call #%d after recovery: %v", i, err)
		}
	}
	if echo.calls.Load() == 0 {
		t.Error("the recovered backend saw no call")
	}
}

// TestSingleflight: identical concurrent Gets (a NO_SIDE_EFFECTS method)
// share one backend call; a caller whose deadline ends while the shared call
// is slow gets DeadlineExceeded at its own deadline, and its leaving neither
// cancels the call for the others nor stops a later call from running.
func TestSingleflight(t *testing.T) {
	t.Parallel()
	const (
		key     = "slow"
		waiters = 8
		short   = 300 * time.Millisecond
	)
	var (
		backendCalls atomic.Int64
		release      = make(chan struct{})
		releaseOnce  sync.Once
	)
	// The node holds Gets of the slow key until the test lets them go: the
	// shared call is as slow as the test needs, with no timing to tune.
	slow := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if get, ok := req.Any().(*kvv1.GetRequest); ok && get.GetKey() == key {
				backendCalls.Add(1)
				select {
				case <-release:
				case <-ctx.Done():
					return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
				}
			}
			return next(ctx, req)
		}
	})
	endpoint := startEtcd(t)
	nodes := startNodes(t, endpoint, 1, func(cfg *kvnode.Config) { cfg.Interceptors = []connect.Interceptor{slow} })
	direct := kvv1connect.NewKVServiceClient(h2cClient(t), nodes[0].APIURL())
	if _, err := direct.Put(callCtx(t), connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
	gw := startGateway(t, gateway.Config{Etcd: []string{endpoint}, Policies: gateway.Policies{Singleflight: true}})
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo)

	// The first caller starts the shared call, with a short deadline of its
	// own sent as the protocol's timeout header (a client-side deadline would
	// end the call in the client, whatever the gateway does).
	type result struct {
		status int
		body   map[string]any
		err    error
		took   time.Duration
	}
	leader := make(chan result, 1)
	ctx := callCtx(t)
	go func() {
		began := time.Now()
		status, body, err := doJSON(ctx, gw.APIURL()+kvv1connect.KVServiceGetProcedure, `{"key":"slow"}`,
			http.Header{"Connect-Timeout-Ms": {fmt.Sprint(short.Milliseconds())}})
		leader <- result{status, body, err, time.Since(began)}
	}()
	waitUntil(t, "the shared call to reach the node", func() bool { return backendCalls.Load() == 1 })

	client := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL())
	var wg sync.WaitGroup
	answers := make(chan error, waiters)
	for range waiters {
		wg.Go(func() {
			resp, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: key}))
			if err == nil && string(resp.Msg.GetValue()) != "v" {
				err = fmt.Errorf("got value %q, want v", resp.Msg.GetValue())
			}
			answers <- err
		})
	}
	waitUntil(t, "every caller to join the shared call", func() bool {
		return metricValue(t, gw.AdminURL(), "flux_gateway_singleflight_calls_total") == waiters+1
	})

	// The shared call is still held, so the leader can only have returned by
	// its own deadline.
	var lead result
	select {
	case lead = <-leader:
	case <-time.After(waitTimeout):
		t.Fatalf("the caller with a %v deadline has not returned after %v", short, waitTimeout)
	}
	if lead.err != nil || lead.body["code"] != "deadline_exceeded" {
		t.Errorf("caller with a %v deadline: got %d %v (%v), want deadline_exceeded", short, lead.status, lead.body, lead.err)
	}
	// Generous: it must return near its deadline, long before the shared
	// call, which is held until now.
	if lead.took > 10*short {
		t.Errorf("caller with a %v deadline returned after %v", short, lead.took)
	}
	if got := backendCalls.Load(); got != 1 {
		t.Fatalf("%d identical concurrent Gets made %d backend calls, want 1", waiters+1, got)
	}

	letGo()
	wg.Wait()
	close(answers)
	for err := range answers {
		if err != nil {
			t.Errorf("caller sharing the call: %v", err)
		}
	}
	if got := backendCalls.Load(); got != 1 {
		t.Errorf("after the shared call: %d backend calls, want 1", got)
	}
	if v := metricValue(t, gw.AdminURL(), "flux_gateway_singleflight_shared_total"); v != waiters {
		t.Errorf("singleflight shared metric: got %v, want %d", v, waiters)
	}
	// Nothing is cached, and the leader's leaving poisoned nothing: a later
	// Get makes a call of its own and succeeds.
	if resp, err := client.Get(callCtx(t), connect.NewRequest(&kvv1.GetRequest{Key: key})); err != nil || string(resp.Msg.GetValue()) != "v" {
		t.Errorf("a later Get: %v, %v", resp, err)
	}
	if got := backendCalls.Load(); got != 2 {
		t.Errorf("a later Get: %d backend calls in all, want 2", got)
	}
}
