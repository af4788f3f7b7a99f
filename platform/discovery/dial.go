package discovery

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

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
