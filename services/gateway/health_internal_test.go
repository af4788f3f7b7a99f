package gateway

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"connectrpc.com/grpchealth"

	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
)

// TestClusterServiceHealthWaitsForEtcd: ClusterService reports NOT_SERVING
// until the gateway has read the cluster's state from etcd (Status can
// only fail before), and SERVING after; the gateway itself is SERVING
// throughout.
func TestClusterServiceHealthWaitsForEtcd(t *testing.T) {
	t.Parallel()
	etcd, err := etcdembed.Start(t.TempDir(), "http://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	g, err := New(Config{
		ID: "gw-health", Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", Etcd: []string{etcd.ClientURL()},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Shutdown(context.Background()) })
	check := func(service string) grpchealth.Status {
		t.Helper()
		res, err := checker{g}.Check(context.Background(), &grpchealth.CheckRequest{Service: service})
		if err != nil {
			t.Fatalf("check %q: %v", service, err)
		}
		return res.Status
	}
	if got := check(clusterv1connect.ClusterServiceName); got != grpchealth.StatusNotServing {
		t.Errorf("ClusterService before the first snapshot: got %v, want not serving", got)
	}
	if got := check(""); got != grpchealth.StatusServing {
		t.Errorf("the gateway before the first snapshot: got %v, want serving", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := g.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := check(clusterv1connect.ClusterServiceName); got != grpchealth.StatusServing {
		t.Errorf("ClusterService after Start: got %v, want serving", got)
	}
}
