package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// OTLP protocols accepted by TracingConfig.OTLPProtocol, named as the
// OTEL_EXPORTER_OTLP_PROTOCOL environment variable names them.
const (
	OTLPProtocolGRPC = "grpc"
	OTLPProtocolHTTP = "http/protobuf"
)

// otlpHTTPPort is the port OTLP/HTTP collectors listen on by convention; an
// endpoint on it is taken to speak HTTP, any other port gRPC (4317).
const otlpHTTPPort = "4318"

// TracingConfig says where a process's spans go.
type TracingConfig struct {
	ServiceName       string // resource service.name, e.g. "flux-node"; OTEL_SERVICE_NAME overrides it
	ServiceInstanceID string // resource service.instance.id, e.g. the node id
	ServiceVersion    string // resource service.version; empty leaves it out

	// OTLPEndpoint is the collector to export to: "host:port" (plaintext) or a
	// URL, "http://host:port" (plaintext) or "https://host:port" (TLS). For
	// OTLP/HTTP a URL without a path gets the standard /v1/traces. Empty falls
	// back to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, then OTEL_EXPORTER_OTLP_ENDPOINT;
	// if those are empty too, tracing is off.
	OTLPEndpoint string
	// OTLPProtocol is OTLPProtocolGRPC or OTLPProtocolHTTP. Empty falls back to
	// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, then OTEL_EXPORTER_OTLP_PROTOCOL, then
	// to the endpoint's port: 4318 means HTTP, anything else gRPC.
	OTLPProtocol string

	// Exporter, when set, receives every span synchronously as it ends, and
	// the OTLP settings are ignored. It is meant for tests
	// (tracetest.NewInMemoryExporter); a slow exporter slows every call.
	Exporter sdktrace.SpanExporter
}

// Tracing is a process's OpenTelemetry tracing: a tracer provider, the W3C
// propagator and the Connect interceptor that uses both. With no exporter
// configured it is off: the provider is a no-op and the interceptor passes
// calls straight through, so tracing costs nothing.
type Tracing struct {
	provider     trace.TracerProvider
	sdk          *sdktrace.TracerProvider // nil when tracing is off
	propagator   propagation.TextMapPropagator
	interceptor  connect.Interceptor
	shutdownOnce sync.Once
	shutdownErr  error
}

// NewTracing sets up tracing as cfg says. It fails on an unknown protocol or an
// endpoint it cannot parse; it does not contact the collector, so a collector
// that is down only costs the spans it misses. The caller must call Shutdown
// to flush spans still buffered.
//
// Spans are sampled as OTEL_TRACES_SAMPLER says, by default all of them,
// following the caller's decision when a traceparent came with the request.
func NewTracing(ctx context.Context, cfg TracingConfig) (*Tracing, error) {
	t := &Tracing{
		propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}
	var processor sdktrace.SpanProcessor
	switch {
	case cfg.Exporter != nil:
		processor = sdktrace.NewSimpleSpanProcessor(cfg.Exporter)
	default:
		exporter, err := newOTLPExporter(ctx, cfg)
		if err != nil {
			return nil, err
		}
		if exporter == nil {
			t.provider = noop.NewTracerProvider()
			t.interceptor = passThrough{}
			return t, nil
		}
		processor = sdktrace.NewBatchSpanProcessor(exporter)
	}
	res, err := newResource(ctx, cfg)
	if err != nil {
		return nil, errors.Join(err, processor.Shutdown(ctx))
	}
	t.sdk = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(processor), sdktrace.WithResource(res))
	t.provider = t.sdk
	interceptor, err := otelconnect.NewInterceptor(
		otelconnect.WithTracerProvider(t.sdk),
		otelconnect.WithPropagator(t.propagator),
		// Prometheus has the RPC metrics already (RPCMetrics).
		otelconnect.WithoutMetrics(),
		// Callers are our own gateway and SDKs, or browsers that chose to send
		// a traceparent: continuing their trace is the point of propagation,
		// where otelconnect would otherwise start a new trace with a link.
		otelconnect.WithTrustRemote(),
		otelconnect.WithFilter(traced),
	)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("otelconnect interceptor: %w", err), t.sdk.Shutdown(ctx))
	}
	t.interceptor = interceptor
	return t, nil
}

// TracerProvider returns the provider spans are made with, a no-op one when
// tracing is off.
func (t *Tracing) TracerProvider() trace.TracerProvider { return t.provider }

// Propagator returns the W3C trace context and baggage propagator.
func (t *Tracing) Propagator() propagation.TextMapPropagator { return t.propagator }

// Interceptor returns the Connect interceptor that traces calls, on handlers
// (server spans, continuing the caller's trace) and on clients (client spans,
// whose context goes out in the request headers). Health checks and
// reflection are not traced: probes every few seconds would bury real calls.
// An interceptor that needs the span, such as the access log's, must come
// after this one in connect.WithInterceptors.
func (t *Tracing) Interceptor() connect.Interceptor { return t.interceptor }

// Shutdown exports the spans still buffered and stops the exporter, giving up
// when ctx ends. Spans started afterwards are dropped. Calling it again
// returns the first call's result.
func (t *Tracing) Shutdown(ctx context.Context) error {
	t.shutdownOnce.Do(func() {
		if t.sdk != nil {
			t.shutdownErr = t.sdk.Shutdown(ctx)
		}
	})
	return t.shutdownErr
}

// traced reports whether calls to spec's procedure get spans.
func traced(_ context.Context, spec connect.Spec) bool {
	return !strings.HasPrefix(spec.Procedure, "/grpc.health.") &&
		!strings.HasPrefix(spec.Procedure, "/grpc.reflection.")
}

func newResource(ctx context.Context, cfg TracingConfig) (*resource.Resource, error) {
	attrs := []resource.Option{resource.WithSchemaURL(semconv.SchemaURL), resource.WithTelemetrySDK()}
	if cfg.ServiceName != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceName(cfg.ServiceName)))
	}
	if cfg.ServiceInstanceID != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceInstanceID(cfg.ServiceInstanceID)))
	}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(cfg.ServiceVersion)))
	}
	// Last, so that an operator's OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
	attrs = append(attrs, resource.WithFromEnv())
	res, err := resource.New(ctx, attrs...)
	if err != nil {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	return res, nil
}

// newOTLPExporter returns the exporter cfg asks for, or nil when no endpoint
// is configured anywhere.
func newOTLPExporter(ctx context.Context, cfg TracingConfig) (sdktrace.SpanExporter, error) {
	endpoint := firstNonEmpty(cfg.OTLPEndpoint,
		os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"))
	if endpoint == "" {
		return nil, nil
	}
	target, err := parseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	protocol := firstNonEmpty(cfg.OTLPProtocol,
		os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL"))
	if protocol == "" {
		protocol = OTLPProtocolGRPC
		if target.Port() == otlpHTTPPort {
			protocol = OTLPProtocolHTTP
		}
	}
	switch protocol {
	case OTLPProtocolGRPC:
		target.Path = ""
		exporter, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(target.String()))
		if err != nil {
			return nil, fmt.Errorf("otlp grpc exporter: %w", err)
		}
		return exporter, nil
	case OTLPProtocolHTTP, "http":
		if target.Path == "" || target.Path == "/" {
			target.Path = "/v1/traces"
		}
		exporter, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(target.String()))
		if err != nil {
			return nil, fmt.Errorf("otlp http exporter: %w", err)
		}
		return exporter, nil
	default:
		return nil, fmt.Errorf("otlp protocol %q: want %q or %q", protocol, OTLPProtocolGRPC, OTLPProtocolHTTP)
	}
}

// parseEndpoint reads "host:port" as plaintext http://host:port, so that
// the usual compose setting (jaeger:4317) needs no scheme.
func parseEndpoint(endpoint string) (*url.URL, error) {
	if !strings.Contains(endpoint, "://") {
		if _, _, err := net.SplitHostPort(endpoint); err != nil {
			return nil, fmt.Errorf("otlp endpoint %q: want host:port or a URL", endpoint)
		}
		endpoint = "http://" + endpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("otlp endpoint %q: %w", endpoint, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("otlp endpoint %q: want host:port, http://host:port or https://host:port", endpoint)
	}
	return u, nil
}

func firstNonEmpty(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// passThrough is the interceptor of disabled tracing.
type passThrough struct{}

func (passThrough) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (passThrough) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (passThrough) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
