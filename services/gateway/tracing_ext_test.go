package gateway_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/telemetry"
	"github.com/fluxkv/fluxkv/services/gateway"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

func newTracing(t *testing.T, service string) (*telemetry.Tracing, *tracetest.InMemoryExporter) {
	t.Helper()
	exporter := tracetest.NewInMemoryExporter()
	tracing, err := telemetry.NewTracing(context.Background(), telemetry.TracingConfig{ServiceName: service, Exporter: exporter})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tracing.Shutdown(context.Background()) })
	return tracing, exporter
}

// spanOf returns the span of the given kind for procedure, waiting for it:
// a server span ends after its response has gone out.
func spanOf(t *testing.T, exporter *tracetest.InMemoryExporter, kind trace.SpanKind, procedure string) tracetest.SpanStub {
	t.Helper()
	var found tracetest.SpanStub
	waitUntil(t, kind.String()+" span of "+procedure, func() bool {
		for _, s := range exporter.GetSpans() {
			if s.SpanKind == kind && "/"+s.Name == procedure {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

// TestTracing: one trace, continued from the caller's traceparent, holds the
// gateway's server span, its client span to the node and the node's server
// span, each the child of the one before.
func TestTracing(t *testing.T) {
	t.Parallel()
	gwTracing, gwSpans := newTracing(t, "flux-gateway")
	nodeTracing, nodeSpans := newTracing(t, "flux-node")
	endpoint := startEtcd(t)
	startNodes(t, endpoint, 1, func(cfg *kvnode.Config) {
		cfg.Interceptors = []connect.Interceptor{nodeTracing.Interceptor()}
		cfg.ClientInterceptors = []connect.Interceptor{nodeTracing.Interceptor()}
	})
	gw := startGateway(t, gateway.Config{
		Etcd:               []string{endpoint},
		Interceptors:       []connect.Interceptor{gwTracing.Interceptor()},
		ClientInterceptors: []connect.Interceptor{gwTracing.Interceptor()},
	})
	// The node has served the probes of startNodes already; only what
	// follows counts.
	nodeSpans.Reset()

	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req := connect.NewRequest(&kvv1.GetRequest{Key: "traced"})
	req.Header().Set("Traceparent", traceparent)
	client := kvv1connect.NewKVServiceClient(h2cClient(t), gw.APIURL(), connect.WithGRPC())
	if _, err := client.Get(callCtx(t), req); err != nil {
		t.Fatal(err)
	}
	procedure := kvv1connect.KVServiceGetProcedure
	gwServer := spanOf(t, gwSpans, trace.SpanKindServer, procedure)
	gwClient := spanOf(t, gwSpans, trace.SpanKindClient, procedure)
	node := spanOf(t, nodeSpans, trace.SpanKindServer, procedure)

	want := gwServer.SpanContext.TraceID()
	if want.String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("gateway server span in trace %s, want the caller's trace", want)
	}
	spans := []struct {
		name         string
		span, parent tracetest.SpanStub
	}{
		{"gateway client", gwClient, gwServer},
		{"node server", node, gwClient},
	}
	for i, tt := range spans {
		if got := tt.span.SpanContext.TraceID(); got != want {
			t.Errorf("#%d %s span: trace %s, want %s", i, tt.name, got, want)
		}
		if got, want := tt.span.Parent.SpanID(), tt.parent.SpanContext.SpanID(); got != want {
			t.Errorf("#%d %s span: parent %s, want %s", i, tt.name, got, want)
		}
	}
}
