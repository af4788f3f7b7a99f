package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fluxkv/fluxkv/platform/buildinfo"
	"github.com/fluxkv/fluxkv/platform/telemetry"
)

// logFlags are the logging flags of the long-running commands.
type logFlags struct {
	level  slog.Level
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	l.format = "text"
	fs.TextVar(&l.level, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", l.format, "log `format`: text or json")
}

func (l *logFlags) logger(env *environment) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: l.level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(env.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(env.stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: use text or json", l.format)
	}
}

// observeFlags are the tracing and access-log flags of node and gateway.
type observeFlags struct {
	otlpEndpoint string
	accessLog    string
}

func (o *observeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.otlpEndpoint, "otlp-endpoint", "", "OTLP `endpoint` to export traces to (host:4317 for gRPC, http://host:4318 for HTTP); empty uses OTEL_EXPORTER_OTLP_ENDPOINT, and without either no traces are exported")
	fs.StringVar(&o.accessLog, "access-log", "", "write one JSON line per call to this `file` (- for standard output); empty turns the access log off")
}

// observability is the tracing and access log of one server process.
type observability struct {
	tracing *telemetry.Tracing
	access  *telemetry.AccessLog
}

func (o *observeFlags) build(ctx context.Context, service, instance string, logger *slog.Logger, reg prometheus.Registerer) (*observability, error) {
	tracing, err := telemetry.NewTracing(ctx, telemetry.TracingConfig{
		ServiceName: service, ServiceInstanceID: instance, ServiceVersion: buildinfo.String(), OTLPEndpoint: o.otlpEndpoint,
	})
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	access, err := telemetry.OpenAccessLog(o.accessLog, reg, telemetry.WithAccessLogLogger(logger))
	if err != nil {
		_ = tracing.Shutdown(ctx)
		return nil, fmt.Errorf("access log: %w", err)
	}
	return &observability{tracing: tracing, access: access}, nil
}

// interceptors run on calls a server handles: tracing first, so the access
// log sees the call's trace id.
func (o *observability) interceptors() []connect.Interceptor {
	return []connect.Interceptor{o.tracing.Interceptor(), o.access.Interceptor()}
}

// clientInterceptors run on calls a server makes to others.
func (o *observability) clientInterceptors() []connect.Interceptor {
	return []connect.Interceptor{o.tracing.Interceptor()}
}

func (o *observability) middleware() []func(http.Handler) http.Handler {
	return []func(http.Handler) http.Handler{o.access.Handler}
}

// close flushes the access log and the traces.
func (o *observability) close(ctx context.Context) error {
	err := o.access.Close(ctx)
	if terr := o.tracing.Shutdown(ctx); err == nil {
		err = terr
	}
	return err
}
