package bench

import (
	"fmt"
	"math/rand/v2"
	"strconv"
)

// Keyspace is the fixed set of keys a run draws from: key i is "k" followed
// by i in decimal, zero-padded so that every key has exactly the same
// length. The keys live in one string, so handing one out allocates
// nothing.
type Keyspace struct {
	n, width int
	buf      string
}

// NewKeyspace returns n keys of width bytes each. It fails when width
// cannot hold "k" and the digits of n-1.
func NewKeyspace(n, width int) (*Keyspace, error) {
	if err := checkKeyWidth(n, width); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, n*width)
	var num []byte
	for i := range n {
		num = strconv.AppendInt(num[:0], int64(i), 10)
		buf = append(buf, 'k')
		for range width - 1 - len(num) {
			buf = append(buf, '0')
		}
		buf = append(buf, num...)
	}
	return &Keyspace{n: n, width: width, buf: string(buf)}, nil
}

// checkKeyWidth reports whether n keys fit in width bytes each: "k" and
// the digits of n-1. It counts the digits rather than building the keys.
func checkKeyWidth(n, width int) error {
	if n < 1 {
		return fmt.Errorf("key space of %d keys: need at least 1", n)
	}
	digits := 1
	for v := n - 1; v >= 10; v /= 10 {
		digits++
	}
	if width < 1+digits {
		return fmt.Errorf("keys of %d bytes cannot number %d keys: need at least %d bytes", width, n, 1+digits)
	}
	return nil
}

// Len returns the number of keys.
func (k *Keyspace) Len() int { return k.n }

// Key returns key i, for 0 <= i < Len().
func (k *Keyspace) Key(i int) string { return k.buf[i*k.width : (i+1)*k.width] }

// Generator draws the keys and the kinds of operation of one worker. It is
// not safe for concurrent use: each worker has its own.
type Generator struct {
	keys      *Keyspace
	rng       *rand.Rand
	zipf      *rand.Zipf // nil for the uniform distribution
	readRatio float64
}

// NewGenerator returns a generator of keys drawn from keys with cfg's
// distribution, and of reads in cfg's ratio, seeded with seed. cfg must be
// valid (see Config.Validate).
func NewGenerator(cfg *Config, keys *Keyspace, seed uint64) *Generator {
	g := &Generator{keys: keys, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), readRatio: cfg.ReadRatio}
	switch cfg.Workload {
	case Get:
		g.readRatio = 1
	case Put:
		g.readRatio = 0
	}
	if cfg.Distribution == Zipfian {
		g.zipf = rand.NewZipf(g.rng, cfg.ZipfS, 1, uint64(keys.Len()-1))
	}
	return g
}

// Index returns the index of the next key: uniform over the key space, or
// Zipfian with index 0 the most frequent.
func (g *Generator) Index() int {
	if g.zipf != nil {
		return int(g.zipf.Uint64())
	}
	return g.rng.IntN(g.keys.Len())
}

// Key returns the next key.
func (g *Generator) Key() string { return g.keys.Key(g.Index()) }

// Read reports whether the next operation is a read, with probability the
// read ratio.
func (g *Generator) Read() bool {
	switch g.readRatio {
	case 1:
		return true
	case 0:
		return false
	}
	return g.rng.Float64() < g.readRatio
}
