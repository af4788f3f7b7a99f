package discovery

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// dialTimeout bounds the first connection to etcd.
const dialTimeout = 5 * time.Second

// Connect returns an etcd client of endpoints, over TLS when tlsConfig is
// set (endpoints then use https://), with the reconnect backoff of
// DialOptions and etcd's own logging discarded: callers log what matters.
// ctx is the client's lifetime, not a dial deadline.
func Connect(ctx context.Context, endpoints []string, tlsConfig *tls.Config) (*clientv3.Client, error) {
	if tlsConfig != nil {
		// etcd's client would speak cleartext to an http:// endpoint and
		// drop the TLS configuration without a word.
		for _, e := range endpoints {
			if !strings.HasPrefix(e, "https://") {
				return nil, fmt.Errorf("connect to etcd: TLS is configured, but endpoint %q is not https://", e)
			}
		}
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: dialTimeout,
		Context:     ctx,
		TLS:         tlsConfig,
		Logger:      zap.NewNop(),
		DialOptions: DialOptions(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd: %w", err)
	}
	return c, nil
}

// maxReconnectDelay bounds the wait between attempts to reach etcd again
// after it went away.
const maxReconnectDelay = time.Second

// DialOptions are the gRPC options of every long-lived etcd client in
// Flux-KV. gRPC's default reconnect backoff grows to two minutes, so after
// an etcd outage of a few seconds a client could wait tens of seconds
// before it even tries again, and a node that lost its lease would stay
// unregistered that long. Capped at a second, a node registers again
// within about a second of etcd's return.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  100 * time.Millisecond,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   maxReconnectDelay,
		},
		MinConnectTimeout: 2 * time.Second,
	})}
}
