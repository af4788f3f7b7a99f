package telemetry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// DefaultAccessLogBuffer is how many lines the access log holds for its
// writer before it drops: at 100k calls a second, a stalled disk gets tens of
// milliseconds before lines are lost.
const DefaultAccessLogBuffer = 4096

// flushBytes bounds the lines gathered into one write when the writer is
// behind, so a burst costs few syscalls without holding lines back for long.
const flushBytes = 64 << 10

// AccessLog writes one JSON line per call: when it started, the peer, the
// protocol (grpc, grpcweb, connect, or http for requests that reach no RPC
// handler), the procedure, the status code, the duration, the bytes received
// and sent on the wire, and the trace id when the call is traced.
//
// Lines go through a bounded buffer to a single writer goroutine, so a slow
// disk or pipe never holds up a request: when the buffer is full the line is
// dropped and counted in flux_access_log_dropped_total.
//
// Install both halves: Handler around the whole API handler, which measures
// the request and writes the line, and Interceptor on every Connect handler,
// which tells Handler the exact procedure and code. A disabled AccessLog (see
// OpenAccessLog) accepts the same calls and does nothing.
type AccessLog struct {
	entries   chan accessEntry // nil when disabled
	out       io.Writer
	logger    *slog.Logger
	file      *os.File // opened by OpenAccessLog, closed by the writer on its way out
	written   prometheus.Counter
	dropped   prometheus.Counter
	closed    atomic.Bool
	closeOnce sync.Once
	stopc     chan struct{}
	donec     chan struct{}
	closeErr  error // set before donec closes
}

// AccessLogOption configures an AccessLog.
type AccessLogOption func(*accessLogConfig)

type accessLogConfig struct {
	buffer int
	logger *slog.Logger
}

// WithAccessLogBuffer sets how many lines may wait for the writer; below 1 it
// is 1. The default is DefaultAccessLogBuffer.
func WithAccessLogBuffer(lines int) AccessLogOption {
	return func(c *accessLogConfig) { c.buffer = max(lines, 1) }
}

// WithAccessLogLogger sets where the access log reports that it cannot write;
// the default is slog.Default().
func WithAccessLogLogger(l *slog.Logger) AccessLogOption {
	return func(c *accessLogConfig) { c.logger = l }
}

// OpenAccessLog returns an access log writing to path: "" turns the log off,
// "-" means standard output, anything else is a file, created if missing and
// appended to. Its counters are registered with reg. It fails if the file
// cannot be opened or the counters are already registered. The caller must
// call Close.
func OpenAccessLog(path string, reg prometheus.Registerer, opts ...AccessLogOption) (*AccessLog, error) {
	switch path {
	case "":
		return NewAccessLog(nil, reg, opts...)
	case "-":
		return NewAccessLog(os.Stdout, reg, opts...)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open access log: %w", err)
	}
	a, err := NewAccessLog(f, reg, opts...)
	if err != nil {
		return nil, errors.Join(err, f.Close())
	}
	a.file = f
	return a, nil
}

// NewAccessLog returns an access log writing to w, or a disabled one if w is
// nil, and starts its writer. Its counters are registered with reg, unless it
// is disabled; it fails if they are already registered. The caller must call
// Close, and must not write to w elsewhere until Close returns.
func NewAccessLog(w io.Writer, reg prometheus.Registerer, opts ...AccessLogOption) (*AccessLog, error) {
	if w == nil {
		return &AccessLog{}, nil
	}
	cfg := accessLogConfig{buffer: DefaultAccessLogBuffer, logger: slog.Default()}
	for _, opt := range opts {
		opt(&cfg)
	}
	a := &AccessLog{
		entries: make(chan accessEntry, cfg.buffer),
		out:     w,
		logger:  cfg.logger,
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_access_log_written_total",
			Help: "Access log lines written.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flux_access_log_dropped_total",
			Help: "Access log lines lost, because the buffer was full or the write failed.",
		}),
		stopc: make(chan struct{}),
		donec: make(chan struct{}),
	}
	for _, c := range []prometheus.Collector{a.written, a.dropped} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register access log metrics: %w", err)
		}
	}
	go a.run()
	return a, nil
}

// Close writes the lines already buffered, stops the writer and closes the
// file OpenAccessLog opened. Lines of calls that end afterwards are dropped.
// If ctx ends first, Close returns ctx.Err() and the writer finishes in the
// background. Calling Close again waits for the same writer.
func (a *AccessLog) Close(ctx context.Context) error {
	if a.entries == nil {
		return nil
	}
	a.closeOnce.Do(func() {
		a.closed.Store(true)
		close(a.stopc)
	})
	select {
	case <-a.donec:
		return a.closeErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Handler returns next wrapped so that every request it serves is logged.
func (a *AccessLog) Handler(next http.Handler) http.Handler {
	if a.entries == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		call := &callInfo{}
		body := &countingBody{ReadCloser: r.Body}
		r = r.WithContext(context.WithValue(r.Context(), callInfoKey{}, call))
		r.Body = body
		rw := &countingWriter{ResponseWriter: w}
		next.ServeHTTP(rw, r)

		e := accessEntry{
			start:      start,
			duration:   time.Since(start),
			peer:       r.RemoteAddr,
			httpMethod: r.Method,
			httpStatus: rw.status(),
			bytesIn:    body.n.Load(),
			bytesOut:   rw.n.Load(),
		}
		call.mu.Lock()
		e.procedure, e.protocol, e.code, e.traceID = call.procedure, call.protocol, call.code, call.traceID
		call.mu.Unlock()
		if e.procedure == "" {
			// Refused before any RPC handler ran (no route, CORS preflight, a
			// policy in front): the response is all there is to go by.
			e.procedure = r.URL.Path
			e.protocol = protocolOf(r)
			e.code = codeOfResponse(rw.Header(), e.httpStatus)
		}
		if !e.traceID.IsValid() {
			e.traceID = incomingTraceID(r)
		}
		a.enqueue(e)
	})
}

// Interceptor returns the Connect interceptor that gives Handler the
// procedure, protocol and final code of each call it serves, and the trace id
// when it comes after the tracing interceptor. Clients are not logged.
func (a *AccessLog) Interceptor() connect.Interceptor {
	if a.entries == nil {
		return passThrough{}
	}
	return accessLogInterceptor{}
}

func (a *AccessLog) enqueue(e accessEntry) {
	if a.closed.Load() {
		a.dropped.Inc()
		return
	}
	select {
	case a.entries <- e:
	default:
		a.dropped.Inc()
	}
}

// run is the writer: it gathers what is buffered into one write, so that a
// busy server makes few syscalls and an idle one writes each line at once.
func (a *AccessLog) run() {
	defer close(a.donec)
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: dropLevelAndMessage})
	lines := 0
	failing := false
	flush := func() {
		if lines == 0 {
			return
		}
		if _, err := a.out.Write(buf.Bytes()); err != nil {
			a.dropped.Add(float64(lines))
			if !failing {
				a.logger.Warn("access log write failed; dropping lines until it works again", "err", err)
			}
			failing = true
		} else {
			a.written.Add(float64(lines))
			failing = false
		}
		buf.Reset()
		lines = 0
	}
	add := func(e accessEntry) {
		// JSONHandler.Handle only fails when a value cannot be marshalled,
		// and every attribute here is a string or a number.
		_ = h.Handle(context.Background(), e.record())
		lines++
		if buf.Len() >= flushBytes {
			flush()
		}
	}
	drain := func() {
		for {
			select {
			case e := <-a.entries:
				add(e)
			default:
				return
			}
		}
	}
	for {
		select {
		case e := <-a.entries:
			add(e)
			drain()
			flush()
		case <-a.stopc:
			drain()
			flush()
			if a.file != nil {
				a.closeErr = a.file.Close()
			}
			return
		}
	}
}

func dropLevelAndMessage(groups []string, attr slog.Attr) slog.Attr {
	if len(groups) == 0 && (attr.Key == slog.LevelKey || attr.Key == slog.MessageKey) {
		return slog.Attr{}
	}
	return attr
}

// accessEntry is one line, kept raw until the writer formats it so that
// requests pay only for a channel send.
type accessEntry struct {
	start      time.Time
	duration   time.Duration
	peer       string
	protocol   string
	procedure  string
	code       string
	httpMethod string
	httpStatus int
	bytesIn    int64
	bytesOut   int64
	traceID    trace.TraceID
}

func (e accessEntry) record() slog.Record {
	r := slog.NewRecord(e.start.UTC(), slog.LevelInfo, "", 0)
	r.AddAttrs(
		slog.String("peer", e.peer),
		slog.String("protocol", e.protocol),
		slog.String("procedure", e.procedure),
		slog.String("code", e.code),
		slog.String("http_method", e.httpMethod),
		slog.Int("http_status", e.httpStatus),
		slog.Float64("duration_ms", float64(e.duration.Microseconds())/1000),
		slog.Int64("bytes_in", e.bytesIn),
		slog.Int64("bytes_out", e.bytesOut),
	)
	if e.traceID.IsValid() {
		r.AddAttrs(slog.String("trace_id", e.traceID.String()))
	}
	return r
}

// callInfo is what the interceptor tells the middleware about a call. The
// mutex is for handlers that finish a call on another goroutine.
type callInfo struct {
	mu        sync.Mutex
	procedure string
	protocol  string
	code      string
	traceID   trace.TraceID
}

type callInfoKey struct{}

func (c *callInfo) begin(ctx context.Context, spec connect.Spec, peer connect.Peer) {
	traceID := trace.SpanContextFromContext(ctx).TraceID()
	c.mu.Lock()
	c.procedure, c.protocol, c.traceID = spec.Procedure, peer.Protocol, traceID
	c.mu.Unlock()
}

func (c *callInfo) end(err error) {
	code := codeOf(err)
	c.mu.Lock()
	c.code = code
	c.mu.Unlock()
}

type accessLogInterceptor struct{}

func (accessLogInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		call, ok := ctx.Value(callInfoKey{}).(*callInfo)
		if !ok || req.Spec().IsClient {
			return next(ctx, req)
		}
		call.begin(ctx, req.Spec(), req.Peer())
		resp, err := next(ctx, req)
		call.end(err)
		return resp, err
	}
}

func (accessLogInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (accessLogInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		call, ok := ctx.Value(callInfoKey{}).(*callInfo)
		if !ok {
			return next(ctx, conn)
		}
		call.begin(ctx, conn.Spec(), conn.Peer())
		err := next(ctx, conn)
		call.end(err)
		return err
	}
}

// countingBody counts the request bytes read.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// countingWriter counts the response bytes written and keeps the status. It
// flushes, because Connect refuses to stream through a writer that cannot,
// and unwraps, so http.ResponseController reaches the connection.
type countingWriter struct {
	http.ResponseWriter
	n          atomic.Int64
	statusCode atomic.Int64
}

func (w *countingWriter) WriteHeader(code int) {
	if code >= http.StatusOK { // 1xx are interim: the final status follows
		w.statusCode.CompareAndSwap(0, int64(code))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.statusCode.CompareAndSwap(0, http.StatusOK)
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

func (w *countingWriter) Flush() {
	w.statusCode.CompareAndSwap(0, http.StatusOK)
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *countingWriter) status() int {
	if s := w.statusCode.Load(); s != 0 {
		return int(s)
	}
	return http.StatusOK // what net/http sends for a handler that wrote nothing
}

// incomingTraceID is the trace id the caller sent, for calls that were not
// traced here (tracing off, or a request no handler took).
func incomingTraceID(r *http.Request) trace.TraceID {
	if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() {
		return sc.TraceID()
	}
	if r.Header.Get("Traceparent") == "" {
		return trace.TraceID{}
	}
	ctx := propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	return trace.SpanContextFromContext(ctx).TraceID()
}
