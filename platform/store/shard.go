package store

import (
	"hash/maphash"
	"math"
	"sync"
	"time"

	"github.com/google/btree"
)

// btreeDegree lets a node hold up to 63 keys (about 1 KiB of string
// headers), which keeps each shard's index two or three levels deep even
// with tens of millions of keys in the store.
const btreeDegree = 32

// item is one stored value. Maps hold items by value rather than by
// pointer: a pointer costs every read a second cache miss (lookups over 100k
// keys ran about 20% slower) and every put an allocation. Copying an item
// does not copy the value's bytes, and a put replaces the value slice rather
// than editing it, so readers may hand values out after unlocking.
type item struct {
	value  []byte
	modRev int64
	expire int64 // wall-clock Unix nanoseconds; 0: no TTL
}

func (it item) entry(key string) Entry {
	e := Entry{Key: key, Value: it.value, ModRevision: it.modRev}
	if it.expire != 0 {
		e.ExpireTime = expireTime(it.expire)
	}
	return e
}

func (it item) hasTTL() bool { return it.expire != 0 }

// expiredAt reports whether it has expired at now (Unix nanoseconds).
func (it item) expiredAt(now int64) bool {
	return it.expire != 0 && now >= it.expire
}

// maxExpire stands for expiry times that int64 nanoseconds cannot hold
// (after the year 2262): in practice, never.
var maxExpire = time.Unix(0, math.MaxInt64)

// expireTime converts an item's expire field to an Entry's ExpireTime.
func expireTime(nanos int64) time.Time {
	if nanos == 0 {
		return time.Time{}
	}
	return time.Unix(0, nanos).UTC()
}

// expireNanos converts an expiry time to an item's expire field.
func expireNanos(t time.Time) int64 {
	if t.After(maxExpire) {
		return math.MaxInt64
	}
	return t.UnixNano()
}

// shard holds a slice of the key space. The trailing padding keeps the
// mutexes of neighbouring shards off the same cache line.
type shard struct {
	mu    sync.RWMutex
	items map[string]item
	index *btree.BTreeG[string] // the keys of items, in order; changes only when keys come or go
	ttl   ttlSet                // the keys of items that have a TTL
	_     [64]byte
}

func (sh *shard) init() {
	sh.items = make(map[string]item)
	sh.index = btree.NewOrderedG[string](btreeDegree)
	sh.ttl.pos = make(map[string]int)
}

// set installs it as key's item; old is the key's current item, if it had
// one (hadOld). The shard must be write-locked.
func (sh *shard) set(key string, old item, hadOld bool, it item) {
	sh.items[key] = it
	if !hadOld {
		sh.index.ReplaceOrInsert(key)
	}
	switch hadTTL, hasTTL := hadOld && old.hasTTL(), it.hasTTL(); {
	case hasTTL && !hadTTL:
		sh.ttl.add(key)
	case !hasTTL && hadTTL:
		sh.ttl.remove(key)
	}
}

// remove deletes key, whose current item is it. The shard must be
// write-locked.
func (sh *shard) remove(key string, it item) {
	delete(sh.items, key)
	sh.index.Delete(key)
	if it.hasTTL() {
		sh.ttl.remove(key)
	}
}

// ttlSet is a set of keys that supports picking a random member in O(1),
// which active expiry needs and a Go map cannot do.
type ttlSet struct {
	keys []string
	pos  map[string]int // index of each key in keys
}

func (t *ttlSet) add(key string) {
	t.pos[key] = len(t.keys)
	t.keys = append(t.keys, key)
}

func (t *ttlSet) remove(key string) {
	i, ok := t.pos[key]
	if !ok {
		return
	}
	last := len(t.keys) - 1
	t.keys[i] = t.keys[last]
	t.pos[t.keys[i]] = i
	t.keys[last] = "" // let the key be collected
	t.keys = t.keys[:last]
	delete(t.pos, key)
}

// shardFor returns the shard that owns key.
func (s *Store) shardFor(key string) *shard {
	return &s.shards[s.shardIndex(key)]
}

// shardIndex hashes key to a shard. maphash won the shard-hash benchmark
// (BenchmarkShardHash), and its per-store seed keeps clients from aiming all
// their keys at one shard.
func (s *Store) shardIndex(key string) uint64 {
	return maphash.String(s.seed, key) & s.mask
}
