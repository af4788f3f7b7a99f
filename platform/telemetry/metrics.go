package telemetry

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// RPCMetrics is a Connect interceptor that counts RPCs by service, method and
// code and observes their duration, on one side of the call: the handler's
// (NewRPCMetrics) or the client's (NewRPCClientMetrics). For streams, the
// duration is the stream's lifetime and the code the one it ended with.
type RPCMetrics struct {
	client   bool
	handled  *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

var _ connect.Interceptor = (*RPCMetrics)(nil)

// rpcBuckets span a cached Get (tens of microseconds) to a long Watch.
var rpcBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30}

// NewRPCMetrics creates the handler-side metrics, flux_rpc_handled_total and
// flux_rpc_handling_seconds, and registers them with reg. It fails if reg
// already holds metrics of the same names. Install it on handlers; it ignores
// client calls.
func NewRPCMetrics(reg prometheus.Registerer) (*RPCMetrics, error) {
	return newRPCMetrics(reg, false,
		"flux_rpc_handled_total", "RPCs completed by this server, by service, method and status code (ok for success).",
		"flux_rpc_handling_seconds", "Time from receiving an RPC to completing it; for streams, the stream's lifetime.")
}

// NewRPCClientMetrics creates the client-side metrics,
// flux_rpc_client_handled_total and flux_rpc_client_handling_seconds, and
// registers them with reg. It fails if reg already holds metrics of the same
// names. Install it on clients; it ignores handlers. A client stream is
// measured when its response is closed, which Connect requires of callers.
func NewRPCClientMetrics(reg prometheus.Registerer) (*RPCMetrics, error) {
	return newRPCMetrics(reg, true,
		"flux_rpc_client_handled_total", "RPCs this process made, by service, method and status code (ok for success).",
		"flux_rpc_client_handling_seconds", "Time from starting an RPC to its response; for streams, the stream's lifetime.")
}

func newRPCMetrics(reg prometheus.Registerer, client bool, countName, countHelp, durationName, durationHelp string) (*RPCMetrics, error) {
	m := &RPCMetrics{
		client: client,
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: countName, Help: countHelp,
		}, []string{"service", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: durationName, Help: durationHelp, Buckets: rpcBuckets,
		}, []string{"service", "method"}),
	}
	for _, c := range []prometheus.Collector{m.handled, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// WrapUnary implements connect.Interceptor.
func (m *RPCMetrics) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient != m.client {
			return next(ctx, req)
		}
		start := time.Now()
		resp, err := next(ctx, req)
		m.observe(req.Spec().Procedure, start, err)
		return resp, err
	}
}

// WrapStreamingClient implements connect.Interceptor.
func (m *RPCMetrics) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	if !m.client {
		return next
	}
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		return &measuredClientConn{StreamingClientConn: next(ctx, spec), metrics: m, start: time.Now()}
	}
}

// WrapStreamingHandler implements connect.Interceptor.
func (m *RPCMetrics) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	if m.client {
		return next
	}
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		m.observe(conn.Spec().Procedure, start, err)
		return err
	}
}

func (m *RPCMetrics) observe(procedure string, start time.Time, err error) {
	service, method := splitProcedure(procedure)
	m.duration.WithLabelValues(service, method).Observe(time.Since(start).Seconds())
	m.handled.WithLabelValues(service, method, codeOf(err)).Inc()
}

// measuredClientConn remembers how a client stream ended, which only Receive
// learns, and records it once the response is closed.
type measuredClientConn struct {
	connect.StreamingClientConn
	metrics *RPCMetrics
	start   time.Time
	once    sync.Once
	mu      sync.Mutex
	err     error
}

func (c *measuredClientConn) Receive(msg any) error {
	err := c.StreamingClientConn.Receive(msg)
	if err != nil && !errors.Is(err, io.EOF) {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
	}
	return err
}

func (c *measuredClientConn) CloseResponse() error {
	err := c.StreamingClientConn.CloseResponse()
	c.once.Do(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.metrics.observe(c.Spec().Procedure, c.start, c.err)
	})
	return err
}
