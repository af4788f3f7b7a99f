package rpcpolicy_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
)

const apiKeyHeader = "Flux-Api-Key"

func newLimiter(t *testing.T, cfg rpcpolicy.LimiterConfig) (*rpcpolicy.Limiter, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := rpcpolicy.NewLimiter(cfg, reg)
	if err != nil {
		t.Fatalf("NewLimiter: %v", err)
	}
	return l, reg
}

// okHandler stands for the proxy behind the limiter.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })

// connectRequest is a Connect unary call from remoteAddr, with an API key
// when key is not empty.
func connectRequest(remoteAddr, key string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, kvv1connect.KVServiceGetProcedure, strings.NewReader(`{"key":"k"}`))
	r.Header.Set("Content-Type", "application/json")
	r.RemoteAddr = remoteAddr
	if key != "" {
		r.Header.Set(apiKeyHeader, key)
	}
	return r
}

// sendBurst sends n requests back to back and counts those let through.
func sendBurst(h http.Handler, n int, newRequest func() *http.Request) int {
	accepted := 0
	for range n {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, newRequest())
		if rec.Code == http.StatusOK {
			accepted++
		}
	}
	return accepted
}

// checkBurst sends three times burst requests back to back and checks that
// the burst got through, and beyond it only the tokens that perSecond refilled
// while the requests went out (a machine running the race detector is slow).
// It returns how many got through.
func checkBurst(t *testing.T, h http.Handler, burst int, perSecond float64) int {
	t.Helper()
	start := time.Now()
	accepted := sendBurst(h, 3*burst, func() *http.Request { return connectRequest("192.0.2.1:5000", "") })
	refilled := int(math.Ceil(time.Since(start).Seconds() * perSecond))
	if accepted < burst || accepted > burst+refilled {
		t.Errorf("accepted %d of %d, want the burst of %d (+%d refilled)", accepted, 3*burst, burst, refilled)
	}
	return accepted
}

// acceptedRate offers requests at offered per second for d and returns how
// many per second got through. After a stall it catches up at once, so the
// offered rate holds on a busy machine.
func acceptedRate(h http.Handler, offered float64, d time.Duration) float64 {
	newRequest := func() *http.Request { return connectRequest("192.0.2.1:5000", "") }
	start := time.Now()
	sent, accepted := 0, 0
	for elapsed := time.Duration(0); elapsed < d; elapsed = time.Since(start) {
		due := int(elapsed.Seconds() * offered)
		accepted += sendBurst(h, due-sent, newRequest)
		sent = due
		time.Sleep(time.Millisecond)
	}
	return float64(accepted) / time.Since(start).Seconds()
}

func TestLimiterRefusesBurstExcess(t *testing.T) {
	t.Parallel()
	const burst = 10
	tests := []struct {
		name   string
		cfg    rpcpolicy.LimiterConfig
		reason string
	}{
		{"global", rpcpolicy.LimiterConfig{GlobalRate: burst, GlobalBurst: burst}, "global"},
		{"client", rpcpolicy.LimiterConfig{ClientRate: burst, ClientBurst: burst}, "client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, reg := newLimiter(t, tt.cfg)
			h := l.Handler(okHandler)
			accepted := checkBurst(t, h, burst, burst)
			v, _ := metricValue(t, reg, "flux_gateway_ratelimit_refused_total", map[string]string{"reason": tt.reason})
			if int(v) != 3*burst-accepted {
				t.Errorf("refused metric: got %v, want %d", v, 3*burst-accepted)
			}

			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, connectRequest("192.0.2.1:5000", ""))
			if rec.Code != http.StatusTooManyRequests {
				t.Fatalf("refused Connect call: got HTTP %d, want 429", rec.Code)
			}
			if secs, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || secs < 1 {
				t.Errorf("Retry-After: got %q, want whole seconds >= 1", rec.Header().Get("Retry-After"))
			}
			var body struct{ Code, Message string }
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Code != "resource_exhausted" {
				t.Errorf("body: got %q (%v), want a resource_exhausted Connect error", rec.Body.String(), err)
			}
		})
	}
}

func TestLimiterAcceptedRateMatchesLimit(t *testing.T) {
	t.Parallel()
	const limit = 100.0
	l, _ := newLimiter(t, rpcpolicy.LimiterConfig{GlobalRate: limit, GlobalBurst: 20})
	h := l.Handler(okHandler)
	// Empty the bucket first, so the burst does not count as rate.
	sendBurst(h, 100, func() *http.Request { return connectRequest("192.0.2.1:5000", "") })
	got := acceptedRate(h, 3*limit, 2500*time.Millisecond)
	t.Logf("accepted %.1f/s at %.0f/s offered", got, 3*limit)
	if math.Abs(got-limit) > 0.1*limit {
		t.Errorf("accepted %.1f/s at %.0f/s offered, want %.0f/s within 10%%", got, 3*limit, limit)
	}
}

func TestLimiterPeersShareGlobalRate(t *testing.T) {
	t.Parallel()
	const fleetRate, fleetBurst = 200.0, 40
	var peers atomic.Int64
	peers.Store(1)
	l, reg := newLimiter(t, rpcpolicy.LimiterConfig{
		GlobalRate:  fleetRate,
		GlobalBurst: fleetBurst,
		Peers:       func() int { return int(peers.Load()) },
	})
	h := l.Handler(okHandler)
	// A second gateway joins after the limiter was built: the next request
	// re-shares the limit.
	peers.Store(2)
	checkBurst(t, h, fleetBurst/2, fleetRate/2)
	if v, _ := metricValue(t, reg, "flux_gateway_ratelimit_global_share", nil); v != fleetRate/2 {
		t.Errorf("share metric: got %v, want %v", v, fleetRate/2)
	}
	want := fleetRate / 2
	got := acceptedRate(h, 3*want, 2500*time.Millisecond)
	t.Logf("accepted %.1f/s at %.0f/s offered", got, 3*want)
	if math.Abs(got-want) > 0.1*want {
		t.Errorf("accepted %.1f/s with 2 gateways, want half the fleet's %.0f/s within 10%%", got, fleetRate)
	}
}

func TestLimiterKeysClients(t *testing.T) {
	t.Parallel()
	l, _ := newLimiter(t, rpcpolicy.LimiterConfig{ClientRate: 1, ClientBurst: 5, ClientKeyHeader: apiKeyHeader})
	h := l.Handler(okHandler)
	tests := []struct {
		remoteAddr, key string
		want            int
	}{
		{"192.0.2.1:5000", "alice", 5},
		{"192.0.2.2:5000", "alice", 0}, // the key, not the address, names the client
		{"192.0.2.1:5000", "bob", 5},
		{"192.0.2.1:5001", "", 5},
		{"192.0.2.1:5002", "", 0}, // another port of the same host is the same client
		{"[2001:db8::1]:5000", "", 5},
	}
	for i, tt := range tests {
		got := sendBurst(h, 10, func() *http.Request { return connectRequest(tt.remoteAddr, tt.key) })
		if got != tt.want {
			t.Errorf("#%d %s key %q: accepted %d, want %d", i, tt.remoteAddr, tt.key, got, tt.want)
		}
	}
}

func TestLimiterBoundsClients(t *testing.T) {
	t.Parallel()
	l, reg := newLimiter(t, rpcpolicy.LimiterConfig{ClientRate: 0.001, ClientBurst: 1, ClientKeyHeader: apiKeyHeader, MaxClients: 2})
	h := l.Handler(okHandler)
	send := func(key string) int {
		return sendBurst(h, 1, func() *http.Request { return connectRequest("192.0.2.1:5000", key) })
	}
	steps := []struct {
		key  string
		want int
	}{
		{"alice", 1},
		{"alice", 0},
		{"bob", 1},
		{"carol", 1}, // pushes out alice, the least recently seen
		{"carol", 0},
		{"alice", 1}, // back with a fresh bucket
	}
	for i, s := range steps {
		if got := send(s.key); got != s.want {
			t.Errorf("#%d %s: accepted %d, want %d", i, s.key, got, s.want)
		}
	}
	if v, _ := metricValue(t, reg, "flux_gateway_ratelimit_clients", nil); v != 2 {
		t.Errorf("clients metric: got %v, want 2", v)
	}
}

func TestLimiterLetsPreflightsThrough(t *testing.T) {
	t.Parallel()
	l, _ := newLimiter(t, rpcpolicy.LimiterConfig{GlobalRate: 0.001, GlobalBurst: 1})
	h := l.Handler(okHandler)
	sendBurst(h, 2, func() *http.Request { return connectRequest("192.0.2.1:5000", "") })
	preflight := httptest.NewRequest(http.MethodOptions, kvv1connect.KVServiceGetProcedure, nil)
	preflight.Header.Set("Access-Control-Request-Method", http.MethodPost)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, preflight)
	if rec.Code != http.StatusOK {
		t.Errorf("preflight with an empty bucket: got HTTP %d, want it passed on", rec.Code)
	}
}

func TestNewLimiterRejectsBadConfig(t *testing.T) {
	t.Parallel()
	tests := []rpcpolicy.LimiterConfig{
		{GlobalRate: -1},
		{ClientRate: math.NaN()},
		{GlobalRate: math.Inf(1)},
		{GlobalRate: 1, GlobalBurst: -1},
		{ClientRate: 1, MaxClients: -1},
	}
	for i, cfg := range tests {
		if _, err := rpcpolicy.NewLimiter(cfg, nil); err == nil {
			t.Errorf("#%d %+v: got no error", i, cfg)
		}
	}
}

// stubKV answers every Get and ends every Watch at once.
type stubKV struct {
	kvv1connect.UnimplementedKVServiceHandler
}

func (stubKV) Get(context.Context, *connect.Request[kvv1.GetRequest]) (*connect.Response[kvv1.GetResponse], error) {
	return connect.NewResponse(&kvv1.GetResponse{Found: true}), nil
}

func (stubKV) Watch(context.Context, *connect.Request[kvv1.WatchRequest], *connect.ServerStream[kvv1.WatchResponse]) error {
	return nil
}

// newH2CServer serves h over cleartext HTTP/2 and returns a client for it.
func newH2CServer(t *testing.T, h http.Handler) (string, *http.Client) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{Protocols: &protocols}
	t.Cleanup(transport.CloseIdleConnections)
	return srv.URL, &http.Client{Transport: transport}
}

func TestLimiterRefusalPerProtocol(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		opts   []connect.ClientOption
		stream bool
	}{
		{"connect proto", nil, false},
		{"connect json", []connect.ClientOption{connect.WithProtoJSON()}, false},
		{"connect stream", nil, true},
		{"grpc", []connect.ClientOption{connect.WithGRPC()}, false},
		{"grpc stream", []connect.ClientOption{connect.WithGRPC()}, true},
		{"grpcweb", []connect.ClientOption{connect.WithGRPCWeb()}, false},
		{"grpcweb json", []connect.ClientOption{connect.WithGRPCWeb(), connect.WithProtoJSON()}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// One call per half hour: the first call passes, the second cannot.
			l, _ := newLimiter(t, rpcpolicy.LimiterConfig{GlobalRate: 1.0 / 1800, GlobalBurst: 1})
			mux := http.NewServeMux()
			mux.Handle(kvv1connect.NewKVServiceHandler(stubKV{}))
			url, httpClient := newH2CServer(t, l.Handler(mux))
			client := kvv1connect.NewKVServiceClient(httpClient, url, tt.opts...)
			ctx := t.Context()

			if _, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: "k"})); err != nil {
				t.Fatalf("first call: %v", err)
			}
			var err error
			if tt.stream {
				stream, callErr := client.Watch(ctx, connect.NewRequest(&kvv1.WatchRequest{}))
				if callErr != nil {
					t.Fatalf("open stream: %v", callErr)
				}
				for stream.Receive() {
				}
				err = stream.Err()
				_ = stream.Close()
			} else {
				_, err = client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: "k"}))
			}
			var connectErr *connect.Error
			if !errors.As(err, &connectErr) || connectErr.Code() != connect.CodeResourceExhausted {
				t.Fatalf("second call: got %v, want ResourceExhausted", err)
			}
			if d := retryDelay(connectErr); d < 29*time.Minute || d > 30*time.Minute {
				t.Errorf("RetryInfo delay: got %v, want about 30m", d)
			}
			if tt.name == "connect proto" {
				if got := connectErr.Meta().Get("Retry-After"); got != "1800" {
					t.Errorf("Retry-After: got %q, want 1800", got)
				}
			}
		})
	}
}

func retryDelay(err *connect.Error) time.Duration {
	for _, d := range err.Details() {
		v, valueErr := d.Value()
		if info, ok := v.(*errdetails.RetryInfo); valueErr == nil && ok {
			return info.GetRetryDelay().AsDuration()
		}
	}
	return 0
}
