package changelog_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/store"
)

// BenchmarkPut measures acknowledged puts per second through the engine
// and the log, on the real disk, for each policy and number of writers.
// "off" is the store alone: the baseline the policies are compared with.
func BenchmarkPut(b *testing.B) {
	value := make([]byte, 64)
	for _, policy := range []string{"off", "no", "everysec", "always"} {
		for _, writers := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/writers=%d", policy, writers), func(b *testing.B) {
				var (
					s   *store.Store
					log *changelog.Log
				)
				if policy == "off" {
					s = store.New()
				} else {
					p, err := changelog.ParsePolicy(policy)
					if err != nil {
						b.Fatal(err)
					}
					if log, err = changelog.Open(b.TempDir(), "bench", changelog.WithPolicy(p)); err != nil {
						b.Fatal(err)
					}
					s = store.New(store.WithChangeHook(log.Append))
					if _, err := log.Replay(s); err != nil {
						b.Fatal(err)
					}
					log.Start()
				}
				defer func() {
					_ = s.Close()
					if log != nil {
						_ = log.Close()
					}
				}()
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
							if log != nil {
								if err := log.Reserve(ctx); err != nil {
									panic(err)
								}
							}
							res, err := s.Put(fmt.Sprintf("key-%02d-%08d", w, i%100_000), value, store.PutOptions{})
							if err != nil {
								panic(err)
							}
							if log != nil {
								if err := log.Wait(ctx, res.Revision); err != nil {
									panic(err)
								}
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

// BenchmarkReplay measures replay of a log of 1M puts of distinct keys
// (16-byte keys, 64-byte values): the bulk of restarting a node holding 1M
// keys.
func BenchmarkReplay(b *testing.B) {
	const records = 1_000_000
	dir := b.TempDir()
	log, err := changelog.Open(dir, "bench", changelog.WithPolicy(changelog.FsyncNo))
	if err != nil {
		b.Fatal(err)
	}
	s := store.New(store.WithChangeHook(log.Append))
	if _, err := log.Replay(s); err != nil {
		b.Fatal(err)
	}
	log.Start()
	value := make([]byte, 64)
	for i := range records {
		if _, err := s.Put(fmt.Sprintf("key-%012d", i), value, store.PutOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	_ = s.Close()
	if err := log.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		log, err := changelog.Open(dir, "bench")
		if err != nil {
			b.Fatal(err)
		}
		s := store.New()
		stats, err := log.Replay(s)
		if err != nil || stats.Records != records || s.Len() != records {
			b.Fatalf("replayed %d records into %d keys: %v", stats.Records, s.Len(), err)
		}
		b.ReportMetric(float64(stats.Records)/stats.Duration.Seconds(), "records/s")
		_ = s.Close()
		_ = log.Close()
	}
}
