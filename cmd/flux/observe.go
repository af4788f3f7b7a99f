package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"time"

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

// server is a long-running process that flux node and flux gateway run:
// a kvnode.Node or a gateway.Gateway.
type server interface {
	Start(ctx context.Context) error
	Wait(ctx context.Context) error
	Shutdown(ctx context.Context) error
}

// serverParts is what runServer needs to build a server once its tracing
// and access log exist.
type serverParts struct {
	Interceptors       []connect.Interceptor
	ClientInterceptors []connect.Interceptor
	Middleware         []func(http.Handler) http.Handler
	Registry           *prometheus.Registry
}

// runServer builds the tracing and access log, creates the server with
// them, starts it, runs it until the signal context ends or a listener
// fails, and shuts it down. It returns the exit code.
func runServer(env *environment, name, instance string, logger *slog.Logger, observe *observeFlags, create func(serverParts) (server, error)) int {
	logger.Info("starting flux "+name, slog.String("version", buildinfo.String()))
	reg := prometheus.NewRegistry()
	obs, err := observe.build(env.ctx, "flux-"+name, instance, logger, reg)
	if err != nil {
		fmt.Fprintf(env.stderr, "flux %s: %v\n", name, err)
		return exitError
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := obs.close(ctx); err != nil {
			logger.Warn("flushing traces and the access log", slog.Any("error", err))
		}
	}()
	srv, err := create(serverParts{obs.interceptors(), obs.clientInterceptors(), obs.middleware(), reg})
	if err != nil {
		fmt.Fprintf(env.stderr, "flux %s: %v\n", name, err)
		return exitError
	}
	// Joining a cluster has its own bound (the server's join timeout).
	if err := srv.Start(env.ctx); err != nil {
		fmt.Fprintf(env.stderr, "flux %s: %v\n", name, err)
		_ = srv.Shutdown(context.Background())
		return exitError
	}
	waitErr := srv.Wait(env.ctx)
	if waitErr != nil {
		logger.Error("listener failed", slog.Any("error", waitErr))
	} else {
		logger.Info("shutting down")
	}
	// The signal context is done by now; Shutdown applies its own timeout.
	start := time.Now()
	if err := srv.Shutdown(context.Background()); err != nil {
		logger.Error("shutdown", slog.Any("error", err))
		return exitError
	}
	logger.Info("shutdown complete", slog.Duration("took", time.Since(start)))
	if waitErr != nil {
		return exitError
	}
	return exitOK
}
