package store_test

import (
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fluxkv/fluxkv/platform/store"
)

const (
	benchKeys     = 100_000
	benchValueLen = 64
)

// kv is the least the benchmarks need, so the store can be compared with
// the obvious alternatives under the same load.
type kv interface {
	get(key string) ([]byte, bool)
	put(key string, value []byte)
}

type shardedKV struct{ s *store.Store }

func (k shardedKV) get(key string) ([]byte, bool) {
	e, ok := k.s.Get(key)
	return e.Value, ok
}

func (k shardedKV) put(key string, value []byte) {
	if _, err := k.s.Put(key, value, store.PutOptions{}); err != nil {
		panic(err)
	}
}

type rwMapKV struct {
	mu sync.RWMutex
	m  map[string][]byte
}

func (k *rwMapKV) get(key string) ([]byte, bool) {
	k.mu.RLock()
	v, ok := k.m[key]
	k.mu.RUnlock()
	return v, ok
}

func (k *rwMapKV) put(key string, value []byte) {
	k.mu.Lock()
	k.m[key] = value
	k.mu.Unlock()
}

type syncMapKV struct{ m sync.Map }

func (k *syncMapKV) get(key string) ([]byte, bool) {
	v, ok := k.m.Load(key)
	if !ok {
		return nil, false
	}
	return v.([]byte), true
}

func (k *syncMapKV) put(key string, value []byte) { k.m.Store(key, value) }

var benchImpls = []struct {
	name string
	new  func(b *testing.B) kv
}{
	{"sharded", func(b *testing.B) kv {
		s := store.New()
		b.Cleanup(func() { _ = s.Close() })
		return shardedKV{s}
	}},
	{"rwmutex", func(*testing.B) kv { return &rwMapKV{m: make(map[string][]byte)} }},
	{"syncmap", func(*testing.B) kv { return &syncMapKV{} }},
}

// benchKeySet returns benchKeys distinct 16-byte keys.
func benchKeySet() []string {
	keys := make([]string, benchKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%012d", i)
	}
	return keys
}

func preload(k kv, keys []string) []byte {
	value := make([]byte, benchValueLen)
	for _, key := range keys {
		k.put(key, value)
	}
	return value
}

// runParallel gives each goroutine its own generator so that picking keys
// neither contends nor dominates the measurement.
func runParallel(b *testing.B, fn func(r *rand.Rand)) {
	var seq atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(1, seq.Add(1)))
		for pb.Next() {
			fn(r)
		}
	})
}

func BenchmarkGet(b *testing.B) {
	keys := benchKeySet()
	for _, impl := range benchImpls {
		b.Run(impl.name, func(b *testing.B) {
			k := impl.new(b)
			preload(k, keys)
			runParallel(b, func(r *rand.Rand) {
				if _, ok := k.get(keys[r.IntN(len(keys))]); !ok {
					panic("missing key")
				}
			})
		})
	}
}

func BenchmarkPut(b *testing.B) {
	keys := benchKeySet()
	for _, impl := range benchImpls {
		b.Run(impl.name, func(b *testing.B) {
			k := impl.new(b)
			value := preload(k, keys)
			runParallel(b, func(r *rand.Rand) {
				k.put(keys[r.IntN(len(keys))], value)
			})
		})
	}
}

func BenchmarkMixed(b *testing.B) {
	keys := benchKeySet()
	for _, impl := range benchImpls {
		b.Run(impl.name, func(b *testing.B) {
			k := impl.new(b)
			value := preload(k, keys)
			runParallel(b, func(r *rand.Rand) {
				key := keys[r.IntN(len(keys))]
				if r.IntN(10) == 0 {
					k.put(key, value)
				} else {
					k.get(key)
				}
			})
		})
	}
}

var hashSink uint64

// fnv1a is FNV-1a written inline, without hash.Hash's interface and
// allocation.
func fnv1a(key string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return h
}

// BenchmarkShardHash compares ways to pick a key's shard; the store uses the
// winner. "store" measures the store's own choice, end to end.
func BenchmarkShardHash(b *testing.B) {
	seed := maphash.MakeSeed()
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	s := store.New()
	b.Cleanup(func() { _ = s.Close() })
	hashes := []struct {
		name string
		fn   func(string) uint64
	}{
		{"maphash", func(k string) uint64 { return maphash.String(seed, k) }},
		{"fnv1a-inline", fnv1a},
		{"hash-fnv", func(k string) uint64 {
			h := fnv.New64a()
			_, _ = h.Write([]byte(k))
			return h.Sum64()
		}},
		{"crc32c", func(k string) uint64 { return uint64(crc32.Checksum([]byte(k), castagnoli)) }},
		{"store", func(k string) uint64 { return uint64(s.ShardIndex(k)) }},
	}
	for _, n := range []int{8, 16, 64} {
		keys := make([]string, 1024)
		for i := range keys {
			keys[i] = fmt.Sprintf("%0*d", n, i)
		}
		for _, h := range hashes {
			b.Run(fmt.Sprintf("%s/len=%d", h.name, n), func(b *testing.B) {
				b.ReportAllocs()
				var sum uint64
				i := 0
				for b.Loop() {
					sum += h.fn(keys[i&1023]) & 255
					i++
				}
				hashSink = sum
			})
		}
	}
}

// BenchmarkScan reads one page from the middle of 100k keys: the cost of a
// page should follow the shard count and the limit, not the key count.
func BenchmarkScan(b *testing.B) {
	keys := benchKeySet()
	for _, shards := range []int{16, 256} {
		for _, limit := range []int{10, 100} {
			b.Run(fmt.Sprintf("shards=%d/limit=%d", shards, limit), func(b *testing.B) {
				s := store.New(store.WithShards(shards))
				b.Cleanup(func() { _ = s.Close() })
				preload(shardedKV{s}, keys)
				cursor := store.EncodeCursor(keys[len(keys)/2])
				b.ReportAllocs()
				for b.Loop() {
					page, err := s.Scan(store.ScanOptions{Cursor: cursor, Limit: limit})
					if err != nil || len(page.Entries) != limit {
						b.Fatalf("scan: got %d entries, %v", len(page.Entries), err)
					}
				}
			})
		}
	}
}
