package kvnode_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// startBenchNode starts a node for a benchmark, with its log off
// (policy "off") or fsynced under policy; tune, if not nil, adjusts its
// config. The node shuts down when the benchmark ends.
func startBenchNode(b *testing.B, policy string, tune func(*kvnode.Config)) *kvnode.Node {
	b.Helper()
	cfg := withTestDefaults(kvnode.Config{DataDir: b.TempDir(), NodeID: "bench"})
	if policy != "off" {
		p, err := changelog.ParsePolicy(policy)
		if err != nil {
			b.Fatal(err)
		}
		cfg.AppendOnly, cfg.AppendFsync = true, p
	}
	if tune != nil {
		tune(&cfg)
	}
	node, err := kvnode.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := node.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = node.Shutdown(context.Background()) })
	return node
}

// BenchmarkAPIPut measures acknowledged Puts per second through a real
// node over gRPC on loopback, with the log off and under each policy, the
// client and the node sharing this machine's cores.
func BenchmarkAPIPut(b *testing.B) {
	value := make([]byte, 64)
	for _, policy := range []string{"off", "no", "everysec", "always"} {
		for _, writers := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/writers=%d", policy, writers), func(b *testing.B) {
				node := startBenchNode(b, policy, nil)
				client := kvv1connect.NewKVServiceClient(h2cClient(b), node.APIURL(), connect.WithGRPC())
				ctx := context.Background()
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for w := range writers {
					wg.Go(func() {
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							req := connect.NewRequest(&kvv1.PutRequest{Key: fmt.Sprintf("key-%02d-%06d", w, i%10_000), Value: value})
							if _, err := client.Put(ctx, req); err != nil {
								panic(err)
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "puts/s")
			})
		}
	}
}
