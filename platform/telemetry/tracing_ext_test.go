package telemetry_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/fluxkv/fluxkv/platform/telemetry"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

// newTestTracing returns tracing that hands every span to an in-memory
// exporter as it ends, shut down when the test ends.
func newTestTracing(t *testing.T, service string) (*telemetry.Tracing, *tracetest.InMemoryExporter) {
	t.Helper()
	spans := tracetest.NewInMemoryExporter()
	tracing, err := telemetry.NewTracing(t.Context(), telemetry.TracingConfig{ServiceName: service, Exporter: spans})
	if err != nil {
		t.Fatalf("new tracing: %v", err)
	}
	t.Cleanup(func() {
		if err := tracing.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown tracing: %v", err)
		}
	})
	return tracing, spans
}

// onlySpan returns the one span exported, failing the test if there are more or none.
func onlySpan(t *testing.T, side string, spans *tracetest.InMemoryExporter) tracetest.SpanStub {
	t.Helper()
	got := spans.GetSpans()
	if len(got) != 1 {
		t.Fatalf("%s exported %d spans, want 1: %v", side, len(got), got)
	}
	return got[0]
}

// TestTracingOneTraceAcrossProcesses plays two processes, each with its own
// tracing, so that only the W3C headers can join their spans.
func TestTracingOneTraceAcrossProcesses(t *testing.T) {
	t.Parallel()
	calls := []struct {
		name      string
		procedure string
		call      func(context.Context, echoClient) error
	}{
		{"unary", echoProcedure, func(ctx context.Context, c echoClient) error {
			_, err := c.callEcho(ctx, "hello")
			return err
		}},
		{"server_stream", countProcedure, func(ctx context.Context, c echoClient) error {
			_, err := c.callCount(ctx, "hello")
			return err
		}},
	}
	for _, proto := range protocols {
		for _, tt := range calls {
			t.Run(proto.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				clientTracing, clientSpans := newTestTracing(t, "caller")
				serverTracing, serverSpans := newTestTracing(t, "callee")
				srv := startEcho(t, nil, connect.WithInterceptors(serverTracing.Interceptor()))
				client := newEchoClient(t, srv.URL,
					append([]connect.ClientOption{connect.WithInterceptors(clientTracing.Interceptor())}, proto.opts...)...)

				ctx, parent := clientTracing.TracerProvider().Tracer("test").Start(t.Context(), "parent")
				if err := tt.call(ctx, client); err != nil {
					t.Fatalf("call: %v", err)
				}
				parent.End()

				spans := clientSpans.GetSpans()
				if len(spans) != 2 {
					t.Fatalf("caller exported %d spans, want the call's and its parent: %v", len(spans), spans)
				}
				clientSpan, parentSpan := spans[0], spans[1]
				serverSpan := onlySpan(t, "callee", serverSpans)
				wantName := tt.procedure[1:]
				if clientSpan.Name != wantName || clientSpan.SpanKind != trace.SpanKindClient {
					t.Errorf("client span: got %q kind %v, want %q kind client", clientSpan.Name, clientSpan.SpanKind, wantName)
				}
				if serverSpan.Name != wantName || serverSpan.SpanKind != trace.SpanKindServer {
					t.Errorf("server span: got %q kind %v, want %q kind server", serverSpan.Name, serverSpan.SpanKind, wantName)
				}
				traceID := parentSpan.SpanContext.TraceID()
				if clientSpan.SpanContext.TraceID() != traceID || serverSpan.SpanContext.TraceID() != traceID {
					t.Errorf("trace ids: parent %v, client %v, server %v; want one trace",
						traceID, clientSpan.SpanContext.TraceID(), serverSpan.SpanContext.TraceID())
				}
				if clientSpan.Parent.SpanID() != parentSpan.SpanContext.SpanID() {
					t.Errorf("client span's parent: got %v, want %v", clientSpan.Parent.SpanID(), parentSpan.SpanContext.SpanID())
				}
				if serverSpan.Parent.SpanID() != clientSpan.SpanContext.SpanID() || !serverSpan.Parent.IsRemote() {
					t.Errorf("server span's parent: got %v (remote %v), want remote %v",
						serverSpan.Parent.SpanID(), serverSpan.Parent.IsRemote(), clientSpan.SpanContext.SpanID())
				}
				if got := serviceName(serverSpan); got != "callee" {
					t.Errorf("server span's service.name: got %q, want callee", got)
				}
			})
		}
	}
}

func serviceName(span tracetest.SpanStub) string {
	for _, kv := range span.Resource.Attributes() {
		if kv.Key == "service.name" {
			return kv.Value.AsString()
		}
	}
	return ""
}

// TestTracingSendsW3CTraceparent checks the header itself, which is what
// services in other languages read.
func TestTracingSendsW3CTraceparent(t *testing.T) {
	t.Parallel()
	tracing, spans := newTestTracing(t, "caller")
	srv := startEcho(t, nil)
	client := newEchoClient(t, srv.URL, connect.WithInterceptors(tracing.Interceptor()))
	got, err := client.callEcho(t.Context(), valueTraceparent)
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	sc := onlySpan(t, "caller", spans).SpanContext
	want := fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
	if got != want {
		t.Errorf("traceparent: got %q, want %q", got, want)
	}
}

func TestTracingSkipsHealthChecks(t *testing.T) {
	t.Parallel()
	tracing, spans := newTestTracing(t, "callee")
	mux := http.NewServeMux()
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker(), connect.WithInterceptors(tracing.Interceptor())))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	check := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](
		srv.Client(), srv.URL+"/grpc.health.v1.Health/Check", connect.WithInterceptors(tracing.Interceptor()))
	if _, err := check.CallUnary(t.Context(), connect.NewRequest(&healthpb.HealthCheckRequest{})); err != nil {
		t.Fatalf("health check: %v", err)
	}
	if got := spans.GetSpans(); len(got) != 0 {
		t.Errorf("health check exported %d spans, want none: %v", len(got), got)
	}
}

// TestTracingOffWithoutEndpoint is not parallel: it clears the environment
// variables that would turn export on, and counts goroutines.
func TestTracingOffWithoutEndpoint(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	tracing, err := telemetry.NewTracing(t.Context(), telemetry.TracingConfig{ServiceName: "off"})
	if err != nil {
		t.Fatalf("new tracing: %v", err)
	}
	ctx, span := tracing.TracerProvider().Tracer("test").Start(t.Context(), "op")
	if span.IsRecording() || span.SpanContext().IsValid() {
		t.Errorf("span without an exporter: recording %v, valid %v; want neither", span.IsRecording(), span.SpanContext().IsValid())
	}
	span.End()

	srv := startEcho(t, nil, connect.WithInterceptors(tracing.Interceptor()))
	client := newEchoClient(t, srv.URL, connect.WithInterceptors(tracing.Interceptor()))
	if got, err := client.callEcho(ctx, valueTraceparent); err != nil || got != "" {
		t.Errorf("call without an exporter: got traceparent %q, err %v; want none", got, err)
	}
	if err := tracing.Shutdown(t.Context()); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	srv.Close()
	srv.Client().CloseIdleConnections()
}

func TestTracingConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []telemetry.TracingConfig{
		{OTLPEndpoint: "collector"},
		{OTLPEndpoint: "ftp://collector:4317"},
		{OTLPEndpoint: "127.0.0.1:4317", OTLPProtocol: "http/json"},
	}
	for i, tt := range tests {
		if tracing, err := telemetry.NewTracing(t.Context(), tt); err == nil {
			t.Errorf("#%d: NewTracing(%+v) succeeded, want an error", i, tt)
			_ = tracing.Shutdown(t.Context())
		}
	}
}

// TestTracingExportsOTLP runs both OTLP transports against fake collectors
// and checks that Shutdown flushes what the batch processor holds.
func TestTracingExportsOTLP(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		protocol string
		start    func(*testing.T, chan<- *coltracepb.ExportTraceServiceRequest) string
	}{
		{"grpc", "", startGRPCCollector},
		{"http", telemetry.OTLPProtocolHTTP, startHTTPCollector},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			exports := make(chan *coltracepb.ExportTraceServiceRequest, 10)
			endpoint := tt.start(t, exports)
			tracing, err := telemetry.NewTracing(t.Context(), telemetry.TracingConfig{
				ServiceName: "flux-test", ServiceInstanceID: "node-1", OTLPEndpoint: endpoint, OTLPProtocol: tt.protocol,
			})
			if err != nil {
				t.Fatalf("new tracing: %v", err)
			}
			_, span := tracing.TracerProvider().Tracer("test").Start(t.Context(), "exported-op")
			span.End()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := tracing.Shutdown(ctx); err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			select {
			case req := <-exports:
				rs := req.GetResourceSpans()
				if len(rs) != 1 || len(rs[0].GetScopeSpans()) != 1 || len(rs[0].GetScopeSpans()[0].GetSpans()) != 1 {
					t.Fatalf("export: got %v, want one span", req)
				}
				if got := rs[0].GetScopeSpans()[0].GetSpans()[0].GetName(); got != "exported-op" {
					t.Errorf("span name: got %q, want exported-op", got)
				}
				attrs := map[string]string{}
				for _, kv := range rs[0].GetResource().GetAttributes() {
					attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
				}
				if attrs["service.name"] != "flux-test" || attrs["service.instance.id"] != "node-1" {
					t.Errorf("resource: got %v, want service.name flux-test and service.instance.id node-1", attrs)
				}
			default:
				t.Fatalf("collector got nothing after Shutdown")
			}
		})
	}
}

type fakeCollector struct {
	coltracepb.UnimplementedTraceServiceServer
	exports chan<- *coltracepb.ExportTraceServiceRequest
}

func (c fakeCollector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.exports <- req
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// startGRPCCollector returns a bare host:port, the form compose files use.
func startGRPCCollector(t *testing.T, exports chan<- *coltracepb.ExportTraceServiceRequest) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, fakeCollector{exports: exports})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// startHTTPCollector returns a URL without a path, to which the exporter
// must add /v1/traces.
func startHTTPCollector(t *testing.T, exports chan<- *coltracepb.ExportTraceServiceRequest) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		req := &coltracepb.ExportTraceServiceRequest{}
		if err == nil {
			err = proto.Unmarshal(body, req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		exports <- req
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
