package kvnode_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	amqp "github.com/rabbitmq/amqp091-go"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// benchBrokerURL is the broker the CDC benchmarks publish to.
func benchBrokerURL(b *testing.B) string {
	url := os.Getenv("FLUX_AMQP_URL")
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/"
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Skipf("RabbitMQ at %s is unreachable: %v", url, err)
	}
	conn.Close()
	return url
}

// BenchmarkCDC measures acknowledged Puts per second from 64 writers with
// the CDC relay off and on (everysec, a durable queue bound so every event
// is routed and stored by RabbitMQ), and with it on, the latency from a
// Put's acknowledgement to a consumer's receipt of its event.
func BenchmarkCDC(b *testing.B) {
	const writers = 64
	value := make([]byte, 64)
	for _, mode := range []string{"off", "on"} {
		b.Run("cdc="+mode, func(b *testing.B) {
			node := fmt.Sprintf("bench-cdc-%d", time.Now().UnixNano())
			cfg := kvnode.Config{
				Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", DataDir: b.TempDir(),
				NodeID: node, Logger: discardLogger(), AppendOnly: true,
			}
			var deliveries <-chan amqp.Delivery
			if mode == "on" {
				url := benchBrokerURL(b)
				cfg.AMQPURL, cfg.CDCQueue = url, node
				conn, err := amqp.Dial(url)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				ch, err := conn.Channel()
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _, _ = ch.QueueDelete(node, false, false, false) }()
				// Declared here too, so the consumer can start before the
				// node; the relay's declaration is the same.
				if _, err := ch.QueueDeclare(node, true, false, false, false, nil); err != nil {
					b.Fatal(err)
				}
				if deliveries, err = ch.Consume(node, "", true, false, false, false, nil); err != nil {
					b.Fatal(err)
				}
			}
			n, err := kvnode.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			if err := n.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer n.Shutdown(context.Background())
			client := kvv1connect.NewKVServiceClient(h2cClient(b), n.APIURL(), connect.WithGRPC())
			ctx := context.Background()

			acked := make([]atomic.Int64, b.N+1) // ack time by revision
			received := make([]int64, 0, b.N)
			done := make(chan struct{})
			if deliveries != nil {
				go func() {
					defer close(done)
					prefix := node + ":"
					for d := range deliveries {
						var rev int64
						if _, err := fmt.Sscanf(d.MessageId[len(prefix):], "%d", &rev); err != nil || rev < 1 || rev > int64(b.N) {
							continue
						}
						received = append(received, max(time.Now().UnixNano()-ackTime(&acked[rev]), 0))
						if len(received) == b.N {
							return
						}
					}
				}()
			}

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
						resp, err := client.Put(ctx, req)
						if err != nil {
							panic(err)
						}
						if rev := resp.Msg.GetRevision(); rev <= int64(b.N) {
							acked[rev].CompareAndSwap(0, time.Now().UnixNano())
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "puts/s")
			if deliveries == nil {
				return
			}
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				b.Fatalf("received %d of %d events", len(received), b.N)
			}
			b.StopTimer()
			slices.Sort(received)
			b.ReportMetric(float64(received[len(received)/2])/1e6, "p50-ack-to-consumer-ms")
			b.ReportMetric(float64(received[len(received)*99/100])/1e6, "p99-ack-to-consumer-ms")
		})
	}
}

// ackTime is when the writer recorded the acknowledgement of a revision.
// An event can arrive before its writer has read the answer (the relay
// publishes once the write is durable, as the node answers); it then
// counts as zero latency.
func ackTime(a *atomic.Int64) int64 {
	if t := a.Load(); t != 0 {
		return t
	}
	return time.Now().UnixNano()
}
