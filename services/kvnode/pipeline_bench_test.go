package kvnode_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// BenchmarkAPIPipeline measures operations per second on one Pipeline
// stream over gRPC on loopback (half gets, half puts of 64-byte values),
// the client keeping depth operations in flight, with the log off and with
// every write fsynced (always), where writes stay in flight at the node
// longest, under bounds on operations in flight at the node up to the
// default.
func BenchmarkAPIPipeline(b *testing.B) {
	value := make([]byte, 64)
	for _, policy := range []string{"off", "always"} {
		for _, inflight := range []int{64, 256, kvnode.DefaultMaxPipelineInFlight} {
			for _, depth := range []int{16, 256, 4096} {
				b.Run(fmt.Sprintf("%s/inflight=%d/depth=%d", policy, inflight, depth), func(b *testing.B) {
					node := startBenchNode(b, policy, func(cfg *kvnode.Config) { cfg.Limits.MaxPipelineInFlight = inflight })
					client := kvv1connect.NewKVServiceClient(h2cClient(b), node.APIURL(), connect.WithGRPC())
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
					defer cancel()
					stream := client.Pipeline(ctx)
					window := make(chan struct{}, depth)
					done := make(chan error, 1)
					go func() {
						for range b.N {
							if _, err := stream.Receive(); err != nil {
								done <- err
								return
							}
							<-window
						}
						done <- nil
					}()
					putReq, getReq := &kvv1.PutRequest{Value: value}, &kvv1.GetRequest{}
					put := &kvv1.Operation{Op: &kvv1.Operation_Put{Put: putReq}}
					get := &kvv1.Operation{Op: &kvv1.Operation_Get{Get: getReq}}
					b.ResetTimer()
					start := time.Now()
					for i := range b.N {
						select {
						case window <- struct{}{}:
						case err := <-done:
							b.Fatalf("receive: %v", err)
						}
						// Send marshals the message before it returns, so the
						// operations are reused.
						key, op := fmt.Sprintf("key-%06d", i%10_000), get
						if i%2 == 0 {
							putReq.Key, op = key, put
						} else {
							getReq.Key = key
						}
						if err := stream.Send(&kvv1.PipelineRequest{Id: uint64(i), Operation: op}); err != nil {
							b.Fatal(err)
						}
					}
					if err := <-done; err != nil {
						b.Fatalf("receive: %v", err)
					}
					b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
					_ = stream.CloseRequest()
					_ = stream.CloseResponse()
				})
			}
		}
	}
}
