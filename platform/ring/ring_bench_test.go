package ring_test

import (
	"fmt"
	"testing"

	"github.com/fluxkv/fluxkv/platform/ring"
)

// BenchmarkOwner measures placing one key, which a node does up to three
// times per write in a cluster (routing, the write gate, the log's stamp).
func BenchmarkOwner(b *testing.B) {
	for _, n := range []int{3, 16} {
		members := make([]string, n)
		for i := range members {
			members[i] = fmt.Sprintf("node-%d", i+1)
		}
		r, err := ring.New(members)
		if err != nil {
			b.Fatal(err)
		}
		keys := make([]string, 1024)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%015d", i)
		}
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				_ = r.Owner(keys[i%len(keys)])
				i++
			}
		})
	}
}
