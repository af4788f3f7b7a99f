// Package telemetry holds the instrumentation shared by Flux-KV's servers:
// Prometheus metrics for every RPC, recorded by a Connect interceptor.
package telemetry

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// RPCMetrics is a Connect interceptor that counts handled RPCs by procedure and
// code and observes their duration. For streams, the duration is the stream's
// lifetime and the code is the one it ended with.
type RPCMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

var _ connect.Interceptor = (*RPCMetrics)(nil)

// NewRPCMetrics creates the metrics and registers them with reg. It fails if
// reg already holds metrics of the same names.
func NewRPCMetrics(reg prometheus.Registerer) (*RPCMetrics, error) {
	m := &RPCMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flux_rpc_handled_total",
			Help: "RPCs completed by the server, by procedure and status code (ok for success).",
		}, []string{"procedure", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flux_rpc_handling_seconds",
			Help:    "Time from receiving an RPC to completing it; for streams, the stream's lifetime.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30},
		}, []string{"procedure"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// WrapUnary implements connect.Interceptor.
func (m *RPCMetrics) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		resp, err := next(ctx, req)
		m.observe(req.Spec().Procedure, start, err)
		return resp, err
	}
}

// WrapStreamingClient implements connect.Interceptor; clients are not measured.
func (m *RPCMetrics) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (m *RPCMetrics) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		m.observe(conn.Spec().Procedure, start, err)
		return err
	}
}

func (m *RPCMetrics) observe(procedure string, start time.Time, err error) {
	m.duration.WithLabelValues(procedure).Observe(time.Since(start).Seconds())
	m.requests.WithLabelValues(procedure, codeOf(err)).Inc()
}

func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	var connectErr *connect.Error
	if errors.As(err, &connectErr) {
		return connectErr.Code().String()
	}
	return connect.CodeUnknown.String()
}
