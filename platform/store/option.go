package store

import "time"

const (
	defaultShards         = 256
	maxShards             = 1 << 16
	defaultExpiryInterval = 100 * time.Millisecond
	defaultExpirySample   = 20
)

type config struct {
	shards         int
	now            func() time.Time
	hook           func(Change)
	expiryInterval time.Duration
	expirySample   int
}

func defaultConfig() config {
	return config{
		shards:         defaultShards,
		now:            time.Now,
		expiryInterval: defaultExpiryInterval,
		expirySample:   defaultExpirySample,
	}
}

// Option configures a Store built by New.
type Option func(*config)

// WithShards sets the number of shards, rounded up to a power of two and
// capped at 65536. Values < 1 keep the default of 256.
func WithShards(n int) Option {
	return func(c *config) {
		if n < 1 {
			return
		}
		p := 1
		for p < n && p < maxShards {
			p <<= 1
		}
		c.shards = p
	}
}

// WithClock sets the clock used for TTLs and commit times, so tests can move
// time by hand. A nil clock keeps time.Now.
func WithClock(now func() time.Time) Option {
	return func(c *config) {
		if now != nil {
			c.now = now
		}
	}
}

// WithChangeHook installs fn as the change hook: it is called for every
// mutation, see Change for what it may and may not do.
func WithChangeHook(fn func(Change)) Option {
	return func(c *config) {
		c.hook = fn
	}
}

// WithExpiryInterval sets how often the active-expiry loop runs. Values <= 0
// keep the default of 100ms.
func WithExpiryInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.expiryInterval = d
		}
	}
}

// WithExpirySample sets how many keys with a TTL the active-expiry loop
// samples per shard and round. Values < 1 keep the default of 20.
func WithExpirySample(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.expirySample = n
		}
	}
}
