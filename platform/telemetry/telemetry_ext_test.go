package telemetry_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The echo service stands in for any Connect service: the instrumentation
// only sees procedures, messages and codes.
const (
	echoProcedure  = "/flux.test.v1.EchoService/Echo"
	countProcedure = "/flux.test.v1.EchoService/Count"
)

// Request values the echo service treats specially.
const (
	valueMissing     = "missing"     // Echo answers NotFound; Count sends one message, then FailedPrecondition
	valueTraceparent = "traceparent" // Echo answers with the traceparent header it received
)

// startEcho serves the echo service over HTTP/1.1 and h2c, with opts on its
// handlers and wrap (if not nil) around them, until the test ends.
func startEcho(t *testing.T, wrap func(http.Handler) http.Handler, opts ...connect.HandlerOption) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(echoProcedure, connect.NewUnaryHandler(echoProcedure,
		func(_ context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			switch req.Msg.GetValue() {
			case valueMissing:
				return nil, connect.NewError(connect.CodeNotFound, errors.New("no such value"))
			case valueTraceparent:
				return connect.NewResponse(wrapperspb.String(req.Header().Get("Traceparent"))), nil
			}
			return connect.NewResponse(req.Msg), nil
		}, opts...))
	mux.Handle(countProcedure, connect.NewServerStreamHandler(countProcedure,
		func(_ context.Context, req *connect.Request[wrapperspb.StringValue], stream *connect.ServerStream[wrapperspb.StringValue]) error {
			for _, v := range []string{"one", "two", "three"} {
				if err := stream.Send(wrapperspb.String(v)); err != nil {
					return err
				}
				if req.Msg.GetValue() == valueMissing {
					return connect.NewError(connect.CodeFailedPrecondition, errors.New("stream cut short"))
				}
			}
			return nil
		}, opts...))
	var h http.Handler = mux
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// h2cClient speaks HTTP/2 without TLS, as gRPC needs.
func h2cClient(t *testing.T) *http.Client {
	t.Helper()
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{Protocols: &protocols}
	t.Cleanup(transport.CloseIdleConnections)
	return &http.Client{Transport: transport}
}

// protocols are the wire protocols every case runs over.
var protocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{connect.ProtocolConnect, nil},
	{connect.ProtocolGRPC, []connect.ClientOption{connect.WithGRPC()}},
	{connect.ProtocolGRPCWeb, []connect.ClientOption{connect.WithGRPCWeb()}},
}

type echoClient struct {
	echo  *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue]
	count *connect.Client[wrapperspb.StringValue, wrapperspb.StringValue]
}

func newEchoClient(t *testing.T, baseURL string, opts ...connect.ClientOption) echoClient {
	t.Helper()
	httpClient := h2cClient(t)
	return echoClient{
		echo:  connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](httpClient, baseURL+echoProcedure, opts...),
		count: connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](httpClient, baseURL+countProcedure, opts...),
	}
}

// callEcho makes a unary call and returns its answer.
func (c echoClient) callEcho(ctx context.Context, value string) (string, error) {
	resp, err := c.echo.CallUnary(ctx, connect.NewRequest(wrapperspb.String(value)))
	if err != nil {
		return "", err
	}
	return resp.Msg.GetValue(), nil
}

// callCount reads a whole server stream and returns how many messages came.
func (c echoClient) callCount(ctx context.Context, value string) (int, error) {
	stream, err := c.count.CallServerStream(ctx, connect.NewRequest(wrapperspb.String(value)))
	if err != nil {
		return 0, err
	}
	n := 0
	for stream.Receive() {
		n++
	}
	return n, errors.Join(stream.Err(), stream.Close())
}

// metricValue returns the value of the counter (or the sample count of the
// histogram) name with exactly labels, and whether reg holds it.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, family := range families {
		if family.GetName() != name {
			continue
		}
	metrics:
		for _, m := range family.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}
