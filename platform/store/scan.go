package store

import (
	"container/heap"
	"strings"
)

// ScanOptions selects a page of keys for Scan.
type ScanOptions struct {
	Prefix string // only keys starting with Prefix
	Cursor string // resume after the page that returned this NextCursor; "" starts at the beginning
	Limit  int    // at most this many entries; <= 0 means DefaultScanLimit
}

// ScanResult is one page of a scan.
type ScanResult struct {
	Entries    []Entry // in ascending byte order of Key
	NextCursor string  // pass back in ScanOptions.Cursor for the next page; "" when no more keys follow
}

// Scan returns live keys starting with opts.Prefix in ascending byte order,
// beginning after the key encoded in opts.Cursor. It does not take a
// snapshot: keys written while a scan pages through the store may or may not
// be seen, but no key that is present throughout is skipped or repeated, and
// each entry is consistent in itself. Scan never removes expired keys.
//
// A cursor that Scan did not produce, or that was produced for another
// prefix, gives ErrInvalidCursor.
func (s *Store) Scan(opts ScanOptions) (ScanResult, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = DefaultScanLimit
	}
	from, exclusive := opts.Prefix, false
	if opts.Cursor != "" {
		key, err := decodeCursor(opts.Cursor, opts.Prefix)
		if err != nil {
			return ScanResult{}, err
		}
		from, exclusive = key, true
	}
	now := s.now().UnixNano()

	// Hash sharding spreads a page evenly, so each shard is first asked for
	// about its share; shards that turn out to hold more are asked again
	// with doubling batches. A page costs O(shards*log n + limit).
	batch := limit/len(s.shards) + 2
	iters := make([]shardIter, len(s.shards))
	h := make(iterHeap, 0, len(s.shards))
	// One allocation backs every shard's first batch.
	bufs := make([]Entry, len(s.shards)*batch)
	for i := range iters {
		it := &iters[i]
		*it = shardIter{
			sh:        &s.shards[i],
			prefix:    opts.Prefix,
			from:      from,
			exclusive: exclusive,
			batch:     batch,
			maxBatch:  limit + 1,
			buf:       bufs[i*batch : i*batch : (i+1)*batch],
		}
		if it.next(now) {
			h = append(h, it)
		}
	}
	heap.Init(&h)

	entries := make([]Entry, 0, min(limit, 1024))
	for len(h) > 0 && len(entries) < limit {
		it := h[0]
		entries = append(entries, it.buf[it.pos])
		it.pos++
		if it.next(now) {
			heap.Fix(&h, 0)
		} else {
			heap.Pop(&h)
		}
	}
	res := ScanResult{Entries: entries}
	// A non-empty heap means some shard has a live key after the last one
	// returned.
	if len(h) > 0 && len(entries) > 0 {
		res.NextCursor = encodeCursor(entries[len(entries)-1].Key)
	}
	return res, nil
}

// shardIter walks the keys of one shard in order, a batch at a time, so that
// the shard is read-locked only while a batch is copied out.
type shardIter struct {
	sh        *shard
	prefix    string
	from      string // keys start at from
	exclusive bool   // from itself was already seen
	done      bool   // no keys left in the shard
	batch     int
	maxBatch  int
	buf       []Entry
	pos       int
}

// next makes buf[pos] the shard's next live key and reports whether there is
// one.
func (it *shardIter) next(now int64) bool {
	for it.pos == len(it.buf) {
		if it.done {
			return false
		}
		it.fill(now)
	}
	return true
}

func (it *shardIter) fill(now int64) {
	it.buf, it.pos = it.buf[:0], 0
	// Expired keys are skipped but still cost a step; bounding the steps
	// bounds how long one fill holds the read lock.
	steps := 4*it.batch + 64
	stopped := false
	it.sh.mu.RLock()
	it.sh.index.AscendGreaterOrEqual(it.from, func(key string) bool {
		if it.exclusive && key == it.from {
			return true
		}
		if !strings.HasPrefix(key, it.prefix) {
			return false
		}
		if len(it.buf) == it.batch || steps == 0 {
			stopped = true
			return false
		}
		steps--
		it.from, it.exclusive = key, true
		if e := it.sh.items[key]; !e.expiredAt(now) {
			it.buf = append(it.buf, e.entry(key))
		}
		return true
	})
	it.sh.mu.RUnlock()
	it.done = !stopped
	it.batch = min(it.batch*2, it.maxBatch)
}

// iterHeap orders shard iterators by their current key.
type iterHeap []*shardIter

func (h iterHeap) Len() int { return len(h) }
func (h iterHeap) Less(i, j int) bool {
	return h[i].buf[h[i].pos].Key < h[j].buf[h[j].pos].Key
}
func (h iterHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *iterHeap) Push(x any)   { *h = append(*h, x.(*shardIter)) }
func (h *iterHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
