package telemetry_test

import (
	"testing"

	"connectrpc.com/connect"
	"github.com/fluxkv/fluxkv/platform/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

func TestRPCMetrics(t *testing.T) {
	t.Parallel()
	serverReg, clientReg := prometheus.NewRegistry(), prometheus.NewRegistry()
	serverMetrics, err := telemetry.NewRPCMetrics(serverReg)
	if err != nil {
		t.Fatalf("server metrics: %v", err)
	}
	clientMetrics, err := telemetry.NewRPCClientMetrics(clientReg)
	if err != nil {
		t.Fatalf("client metrics: %v", err)
	}
	if _, err := telemetry.NewRPCMetrics(serverReg); err == nil {
		t.Errorf("registering the server metrics twice succeeded, want an error")
	}
	// Each side's metrics sit on both sides, to show they count only their own.
	srv := startEcho(t, nil, connect.WithInterceptors(serverMetrics, clientMetrics))
	for _, proto := range protocols {
		client := newEchoClient(t, srv.URL, append([]connect.ClientOption{connect.WithInterceptors(serverMetrics, clientMetrics)}, proto.opts...)...)
		_, _ = client.callEcho(t.Context(), "hello")
		_, _ = client.callEcho(t.Context(), valueMissing)
		_, _ = client.callCount(t.Context(), "hello")
		_, _ = client.callCount(t.Context(), valueMissing)
	}

	calls := float64(len(protocols))
	const service = "flux.test.v1.EchoService"
	tests := []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"handled_total", map[string]string{"service": service, "method": "Echo", "code": "ok"}, calls},
		{"handled_total", map[string]string{"service": service, "method": "Echo", "code": "not_found"}, calls},
		{"handled_total", map[string]string{"service": service, "method": "Count", "code": "ok"}, calls},
		{"handled_total", map[string]string{"service": service, "method": "Count", "code": "failed_precondition"}, calls},
		{"handling_seconds", map[string]string{"service": service, "method": "Echo"}, 2 * calls},
		{"handling_seconds", map[string]string{"service": service, "method": "Count"}, 2 * calls},
	}
	sides := []struct {
		reg    *prometheus.Registry
		prefix string
	}{
		{serverReg, "flux_rpc_"},
		{clientReg, "flux_rpc_client_"},
	}
	for _, side := range sides {
		for i, tt := range tests {
			name := side.prefix + tt.metric
			if got, _ := metricValue(t, side.reg, name, tt.labels); got != tt.want {
				t.Errorf("#%d: %s%v: got %v, want %v", i, name, tt.labels, got, tt.want)
			}
		}
	}
}
