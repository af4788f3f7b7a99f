package store

// ExpireCycle runs one active-expiry cycle now, so tests need not wait for
// the loop, and returns how many keys it removed.
func (s *Store) ExpireCycle() int { return s.expireCycle() }

// EncodeCursor and DecodeCursor expose the cursor format to the fuzz target.
var (
	EncodeCursor = encodeCursor
	DecodeCursor = decodeCursor
)

// ShardIndex exposes the shard choice to the shard-hash benchmark.
func (s *Store) ShardIndex(key string) int {
	return int(s.shardIndex(key))
}
