package store

import (
	"math/rand/v2"
	"time"
)

const (
	// expiryRepeatRatio: like Redis, a shard whose sample was more than a
	// quarter expired probably holds many more expired keys, so it is sampled
	// again in the same cycle.
	expiryRepeatRatio = 4
	// expiryRoundsPerShard bounds one cycle to this many samples per shard on
	// average, so a burst of expiries cannot stall the loop (or the shards it
	// locks) for long; what is left waits for the next tick.
	expiryRoundsPerShard = 4
)

func (s *Store) runExpiry() {
	defer close(s.loopc)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-s.stopc:
			return
		case <-t.C:
			s.expireCycle()
		}
	}
}

// expireCycle runs one active-expiry cycle and returns how many keys it
// removed. A cycle that runs out of budget resumes at the same shard next
// time, so every shard gets its turn.
func (s *Store) expireCycle() int {
	s.cycleMu.Lock()
	defer s.cycleMu.Unlock()

	now := s.now()
	budget := s.sample * len(s.shards) * expiryRoundsPerShard
	removed := 0
	i := 0
	for ; i < len(s.shards) && budget > 0; i++ {
		sh := &s.shards[(s.expireNext+i)&int(s.mask)]
		for budget > 0 {
			sampled, expired, all, err := s.expireSample(sh, min(s.sample, budget), now)
			budget -= sampled
			removed += expired
			if err != nil {
				return removed
			}
			if all || sampled == 0 || expired*expiryRepeatRatio <= sampled {
				break
			}
		}
	}
	if budget <= 0 {
		// The shard we stopped in may not be done; start there next time.
		i--
	}
	s.expireNext = (s.expireNext + i) & int(s.mask)
	return removed
}

// expireSample checks up to n random keys with a TTL in sh and removes the
// expired ones. all reports that every key with a TTL was checked.
func (s *Store) expireSample(sh *shard, n int, now time.Time) (sampled, expired int, all bool, err error) {
	nowNanos := now.UnixNano()
	sh.mu.Lock()
	defer sh.mu.Unlock()

	check := func(i int) error {
		key := sh.ttl.keys[i]
		it := sh.items[key]
		sampled++
		if !it.expiredAt(nowNanos) {
			return nil
		}
		if err := s.expireLocked(sh, key, it, now); err != nil {
			return err
		}
		expired++
		return nil
	}

	if len(sh.ttl.keys) <= n {
		// Walk backwards: removal moves the last key into the hole, and
		// the last key has already been checked.
		for i := len(sh.ttl.keys) - 1; i >= 0; i-- {
			if err := check(i); err != nil {
				return sampled, expired, true, err
			}
		}
		return sampled, expired, true, nil
	}
	for range n {
		if len(sh.ttl.keys) == 0 {
			break
		}
		if err := check(rand.IntN(len(sh.ttl.keys))); err != nil {
			return sampled, expired, false, err
		}
	}
	return sampled, expired, false, nil
}
