package gateway_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/services/gateway"
)

// BenchmarkGet compares Get straight to a node with Get through the
// gateway: 64 concurrent clients, each with its own connection, speaking
// Connect's gRPC protocol over h2c to a 1-node cluster of preloaded keys.
// Besides ns/op (wall time over all clients) it reports throughput, the p50
// and p99 latency of single calls and the CPU time of the whole process
// (clients, gateway, node) per call.
func BenchmarkGet(b *testing.B) {
	const (
		clients = 64
		keys    = 1024
	)
	endpoint := startEtcd(b)
	nodes := startNodes(b, endpoint, 1, nil)
	// As `flux gateway` runs by default: singleflight on, no exporter.
	gw := startGateway(b, gateway.Config{Etcd: []string{endpoint}, Policies: gateway.Policies{Singleflight: true}})
	loader := kvv1connect.NewKVServiceClient(h2cClient(b), nodes[0].APIURL(), connect.WithGRPC())
	names := make([]string, keys)
	value := make([]byte, 64)
	for i := range names {
		names[i] = fmt.Sprintf("bench/%04d", i)
		if _, err := loader.Put(context.Background(), connect.NewRequest(&kvv1.PutRequest{Key: names[i], Value: value})); err != nil {
			b.Fatal(err)
		}
	}
	for _, target := range []struct{ name, url string }{{"direct", nodes[0].APIURL()}, {"gateway", gw.APIURL()}} {
		b.Run(target.name, func(b *testing.B) {
			benchGets(b, target.url, clients, names)
		})
	}
}

func benchGets(b *testing.B, baseURL string, clients int, keys []string) {
	cs := make([]kvv1connect.KVServiceClient, clients)
	for i := range cs {
		cs[i] = kvv1connect.NewKVServiceClient(h2cClient(b), baseURL, connect.WithGRPC())
		// Connected before the clock starts.
		if _, err := cs[i].Get(context.Background(), connect.NewRequest(&kvv1.GetRequest{Key: keys[0]})); err != nil {
			b.Fatal(err)
		}
	}
	latencies := make([][]time.Duration, clients)
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	b.ReportAllocs()
	b.ResetTimer()
	cpuBefore := cpuTime(b)
	began := time.Now()
	for w, client := range cs {
		wg.Go(func() {
			mine := make([]time.Duration, 0, b.N/clients+1)
			for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
				key := keys[(int(i)*7919)%len(keys)]
				start := time.Now()
				resp, err := client.Get(context.Background(), connect.NewRequest(&kvv1.GetRequest{Key: key}))
				mine = append(mine, time.Since(start))
				if err != nil || !resp.Msg.GetFound() {
					b.Errorf("get %s: %v, %v", key, resp, err)
					return
				}
			}
			latencies[w] = mine
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	cpu := cpuTime(b) - cpuBefore
	b.StopTimer()
	all := slices.Concat(latencies...)
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "gets/s")
	b.ReportMetric(float64(all[len(all)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds())/1e3, "p99-µs")
	// Client, gateway and node share the machine's cores, so the CPU time
	// of a Get tells apart what throughput, with other load around, blurs.
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(len(all)), "cpu-µs/op")
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
