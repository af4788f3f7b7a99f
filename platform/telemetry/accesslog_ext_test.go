package telemetry_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/fluxkv/fluxkv/platform/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// accessLine is one access log line as a log shipper would decode it.
type accessLine struct {
	Time       time.Time `json:"time"`
	Peer       string    `json:"peer"`
	Protocol   string    `json:"protocol"`
	Procedure  string    `json:"procedure"`
	Code       string    `json:"code"`
	HTTPMethod string    `json:"http_method"`
	HTTPStatus int       `json:"http_status"`
	DurationMS *float64  `json:"duration_ms"`
	BytesIn    int64     `json:"bytes_in"`
	BytesOut   int64     `json:"bytes_out"`
	TraceID    string    `json:"trace_id"`
}

// syncBuffer is a writer the test can read while the log writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitLines waits for n lines to reach out and decodes them. Lines are
// waited for rather than flushed by Close because the server logs a call
// after the client already has the response.
func waitLines(t *testing.T, out *syncBuffer, n int) []accessLine {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "\n") < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d access log lines, want %d:\n%s", strings.Count(out.String(), "\n"), n, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return decodeLines(t, out.String())
}

func decodeLines(t *testing.T, text string) []accessLine {
	t.Helper()
	var lines []accessLine
	scanner := bufio.NewScanner(strings.NewReader(text))
	for scanner.Scan() {
		var line accessLine
		if err := json.Unmarshal(scanner.Bytes(), &line); err != nil {
			t.Fatalf("access log line %q: %v", scanner.Text(), err)
		}
		lines = append(lines, line)
	}
	return lines
}

// newTestAccessLog writes to out and is closed when the test ends.
func newTestAccessLog(t *testing.T, out *syncBuffer, reg prometheus.Registerer, opts ...telemetry.AccessLogOption) *telemetry.AccessLog {
	t.Helper()
	accessLog, err := telemetry.NewAccessLog(out, reg, opts...)
	if err != nil {
		t.Fatalf("new access log: %v", err)
	}
	t.Cleanup(func() {
		if err := accessLog.Close(context.Background()); err != nil {
			t.Errorf("close access log: %v", err)
		}
	})
	return accessLog
}

func TestAccessLogCalls(t *testing.T) {
	t.Parallel()
	calls := []struct {
		procedure string
		value     string
		code      string
		status    map[string]int // by protocol; 200 if absent
	}{
		{echoProcedure, "hello", "ok", nil},
		{echoProcedure, valueMissing, "not_found", map[string]int{connect.ProtocolConnect: http.StatusNotFound}},
		{countProcedure, "hello", "ok", nil},
		{countProcedure, valueMissing, "failed_precondition", nil},
	}
	for _, proto := range protocols {
		t.Run(proto.name, func(t *testing.T) {
			t.Parallel()
			tracing, spans := newTestTracing(t, "callee")
			out := &syncBuffer{}
			accessLog := newTestAccessLog(t, out, prometheus.NewRegistry())
			srv := startEcho(t, accessLog.Handler, connect.WithInterceptors(tracing.Interceptor(), accessLog.Interceptor()))
			client := newEchoClient(t, srv.URL, proto.opts...)

			before := time.Now().Add(-time.Second)
			for _, c := range calls {
				var err error
				if c.procedure == echoProcedure {
					_, err = client.callEcho(t.Context(), c.value)
				} else {
					_, err = client.callCount(t.Context(), c.value)
				}
				if got := connect.CodeOf(err); err != nil && got.String() != c.code {
					t.Fatalf("%s(%q): got %v, want %s", c.procedure, c.value, err, c.code)
				}
			}

			traceIDs := map[string]bool{}
			for _, span := range spans.GetSpans() {
				traceIDs[span.SpanContext.TraceID().String()] = true
			}
			byCall := map[string]accessLine{}
			for _, line := range waitLines(t, out, len(calls)) {
				byCall[line.Procedure+" "+line.Code] = line
			}
			for i, c := range calls {
				line, ok := byCall[c.procedure+" "+c.code]
				if !ok {
					t.Errorf("#%d: no line for %s with code %s in %v", i, c.procedure, c.code, byCall)
					continue
				}
				wantStatus := http.StatusOK
				if s, ok := c.status[proto.name]; ok {
					wantStatus = s
				}
				if line.Protocol != proto.name || line.HTTPMethod != http.MethodPost || line.HTTPStatus != wantStatus {
					t.Errorf("#%d: got protocol %q, %s, status %d; want %q, POST, %d",
						i, line.Protocol, line.HTTPMethod, line.HTTPStatus, proto.name, wantStatus)
				}
				if !strings.HasPrefix(line.Peer, "127.0.0.1:") {
					t.Errorf("#%d: got peer %q, want 127.0.0.1:port", i, line.Peer)
				}
				if line.Time.Before(before) || line.Time.After(time.Now()) {
					t.Errorf("#%d: got time %v, want the last second", i, line.Time)
				}
				if line.DurationMS == nil || *line.DurationMS < 0 {
					t.Errorf("#%d: got duration_ms %v, want a duration", i, line.DurationMS)
				}
				// A unary gRPC error is all trailers: no body at all.
				bodyless := c.procedure == echoProcedure && c.code != "ok" && proto.name != connect.ProtocolConnect
				if line.BytesIn <= 0 || (line.BytesOut <= 0) != bodyless {
					t.Errorf("#%d: got %d bytes in and %d out, want both counted", i, line.BytesIn, line.BytesOut)
				}
				if !traceIDs[line.TraceID] {
					t.Errorf("#%d: got trace id %q, want one of the server's %v", i, line.TraceID, traceIDs)
				}
			}
		})
	}
}

// TestAccessLogRequestsNoHandlerSaw covers what the interceptor never sees:
// unknown routes, CORS preflights and calls a policy in front refused.
func TestAccessLogRequestsNoHandlerSaw(t *testing.T) {
	t.Parallel()
	out := &syncBuffer{}
	accessLog := newTestAccessLog(t, out, prometheus.NewRegistry())
	refuse := func(next http.Handler) http.Handler {
		errorWriter := connect.NewErrorWriter()
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Refuse") != "" {
				_ = errorWriter.Write(w, r, connect.NewError(connect.CodeResourceExhausted, errors.New("slow down")))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	srv := startEcho(t, func(h http.Handler) http.Handler { return accessLog.Handler(refuse(h)) },
		connect.WithInterceptors(accessLog.Interceptor()))

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	unknown, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/flux.nope.v1.NopeService/Nope", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	unknown.Header.Set("Content-Type", "application/json")
	unknown.Header.Set("Connect-Protocol-Version", "1")
	unknown.Header.Set("Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	preflight, err := http.NewRequestWithContext(t.Context(), http.MethodOptions, srv.URL+echoProcedure, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []*http.Request{unknown, preflight} {
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
		}
		resp.Body.Close()
	}
	for _, proto := range protocols {
		client := newEchoClient(t, srv.URL, append([]connect.ClientOption{connect.WithInterceptors(refuseHeader{})}, proto.opts...)...)
		if _, err := client.callEcho(t.Context(), "hello"); connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("%s: refused call: got %v, want resource_exhausted", proto.name, err)
		}
	}

	tests := []accessLine{
		{Procedure: "/flux.nope.v1.NopeService/Nope", Protocol: "connect", Code: "unimplemented", HTTPMethod: http.MethodPost, HTTPStatus: http.StatusNotFound, TraceID: traceID},
		{Procedure: echoProcedure, Protocol: "http", Code: "unimplemented", HTTPMethod: http.MethodOptions, HTTPStatus: http.StatusMethodNotAllowed},
		{Procedure: echoProcedure, Protocol: "connect", Code: "resource_exhausted", HTTPMethod: http.MethodPost, HTTPStatus: http.StatusTooManyRequests},
		{Procedure: echoProcedure, Protocol: "grpc", Code: "resource_exhausted", HTTPMethod: http.MethodPost, HTTPStatus: http.StatusOK},
		{Procedure: echoProcedure, Protocol: "grpcweb", Code: "resource_exhausted", HTTPMethod: http.MethodPost, HTTPStatus: http.StatusOK},
	}
	lines := waitLines(t, out, len(tests))
	for i, tt := range tests {
		found := false
		for _, line := range lines {
			if line.Procedure == tt.Procedure && line.Protocol == tt.Protocol && line.HTTPMethod == tt.HTTPMethod {
				found = true
				if line.Code != tt.Code || line.HTTPStatus != tt.HTTPStatus || line.TraceID != tt.TraceID {
					t.Errorf("#%d: got code %q, status %d, trace %q; want %q, %d, %q",
						i, line.Code, line.HTTPStatus, line.TraceID, tt.Code, tt.HTTPStatus, tt.TraceID)
				}
			}
		}
		if !found {
			t.Errorf("#%d: no line for %s %s over %s in %+v", i, tt.HTTPMethod, tt.Procedure, tt.Protocol, lines)
		}
	}
}

// refuseHeader asks the test's policy to refuse the call.
type refuseHeader struct{}

func (refuseHeader) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("X-Refuse", "1")
		return next(ctx, req)
	}
}

func (refuseHeader) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (refuseHeader) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// blockedWriter holds every write until release is closed.
type blockedWriter struct {
	release chan struct{}
}

func (w blockedWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

func TestAccessLogDropsWhenFull(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	out := blockedWriter{release: make(chan struct{})}
	accessLog, err := telemetry.NewAccessLog(out, reg, telemetry.WithAccessLogBuffer(1))
	if err != nil {
		t.Fatalf("new access log: %v", err)
	}
	srv := startEcho(t, accessLog.Handler, connect.WithInterceptors(accessLog.Interceptor()))
	client := newEchoClient(t, srv.URL)

	const calls = 20
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for i := range calls {
		if _, err := client.callEcho(ctx, "hello"); err != nil {
			t.Fatalf("call %d with the log blocked: %v", i, err)
		}
	}
	// Every line is enqueued or dropped once the server is done with it.
	srv.Close()
	// At most one line is in the writer's hands and one in the buffer.
	if dropped, _ := metricValue(t, reg, "flux_access_log_dropped_total", nil); dropped < calls-2 {
		t.Errorf("dropped %v lines with the writer blocked, want at least %d", dropped, calls-2)
	}

	close(out.release)
	if err := accessLog.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	written, _ := metricValue(t, reg, "flux_access_log_written_total", nil)
	dropped, _ := metricValue(t, reg, "flux_access_log_dropped_total", nil)
	if written+dropped != calls || written < 1 {
		t.Errorf("got %v written and %v dropped, want %d in all and at least one written", written, dropped, calls)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestAccessLogCountsFailedWrites(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	accessLog, err := telemetry.NewAccessLog(failingWriter{}, reg,
		telemetry.WithAccessLogLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatalf("new access log: %v", err)
	}
	srv := startEcho(t, accessLog.Handler, connect.WithInterceptors(accessLog.Interceptor()))
	if _, err := newEchoClient(t, srv.URL).callEcho(t.Context(), "hello"); err != nil {
		t.Fatalf("call: %v", err)
	}
	srv.Close()
	if err := accessLog.Close(t.Context()); err != nil {
		t.Fatalf("close: %v", err)
	}
	if dropped, _ := metricValue(t, reg, "flux_access_log_dropped_total", nil); dropped != 1 {
		t.Errorf("got %v dropped, want the one line that failed", dropped)
	}
}

func TestOpenAccessLogFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "access.log")
	for run := 1; run <= 2; run++ {
		accessLog, err := telemetry.OpenAccessLog(path, prometheus.NewRegistry())
		if err != nil {
			t.Fatalf("run %d: open: %v", run, err)
		}
		srv := startEcho(t, accessLog.Handler, connect.WithInterceptors(accessLog.Interceptor()))
		if _, err := newEchoClient(t, srv.URL).callEcho(t.Context(), "hello"); err != nil {
			t.Fatalf("run %d: call: %v", run, err)
		}
		srv.Close()
		if err := accessLog.Close(t.Context()); err != nil {
			t.Fatalf("run %d: close: %v", run, err)
		}
	}
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A restart appends to the file rather than truncating it.
	if lines := decodeLines(t, string(text)); len(lines) != 2 || lines[1].Procedure != echoProcedure {
		t.Errorf("got %+v, want two lines for %s", lines, echoProcedure)
	}
}

func TestAccessLogOff(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	accessLog, err := telemetry.OpenAccessLog("", reg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	mux := http.NewServeMux()
	if got := accessLog.Handler(mux); got != mux {
		t.Errorf("disabled Handler wrapped the handler, want it as it was")
	}
	if families, _ := reg.Gather(); len(families) != 0 {
		t.Errorf("disabled access log registered %d metrics, want none", len(families))
	}
	if err := accessLog.Close(t.Context()); err != nil {
		t.Errorf("close: %v", err)
	}
	if _, err := telemetry.OpenAccessLog(filepath.Join(t.TempDir(), "missing", "access.log"), reg); err == nil {
		t.Errorf("open in a missing directory succeeded, want an error")
	}
}
