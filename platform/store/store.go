// Package store is the storage engine of a fluxkv node: an in-memory,
// sharded key-value map with per-key TTLs and etcd-style revisions.
//
// Keys are spread over a power-of-two number of shards, each a Go map behind
// its own sync.RWMutex, so operations on different keys rarely contend. A put
// replaces a key's value slice rather than editing it, which lets readers
// hand out values without copying them.
//
// Every mutation (put, delete, expiry) is assigned the next value of a single
// per-node revision counter: revisions are strictly increasing and have no
// gaps. When a change hook is installed (WithChangeHook), it is called
// synchronously for every mutation, in revision order, while the mutated
// key's shard is locked; a log layer can therefore append the hook's changes
// to a buffer and replay them later with Apply to rebuild the same state.
//
// Keys with a TTL expire when the clock reaches their expiry time. Expired
// keys are never returned, even before they are removed. They are removed
// lazily by the first Get, Put or Delete that touches them and actively, like
// Redis, by a background loop (Start) that samples keys with a TTL.
package store

import (
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// DefaultScanLimit is the page size Scan uses when ScanOptions.Limit <= 0.
const DefaultScanLimit = 100

var (
	// ErrConditionFailed is returned by Put and Delete when the operation's
	// Condition does not hold. The result that comes with it carries the
	// store's current revision and the key's current entry.
	ErrConditionFailed = errors.New("store: condition failed")
	// ErrInvalidCursor is returned by Scan when the cursor was not produced
	// by Scan or does not belong to the requested prefix.
	ErrInvalidCursor = errors.New("store: invalid cursor")
	// ErrInvalidOptions is returned for inconsistent options (a negative TTL,
	// KeepTTL with a TTL, Delete with IfAbsent, a malformed Change) and for
	// keys that are not valid UTF-8, which a scan cursor could not carry.
	ErrInvalidOptions = errors.New("store: invalid options")
	// ErrClosed is returned by writes made after Close.
	ErrClosed = errors.New("store: closed")
)

// Entry is a key and its current value as held by the store.
type Entry struct {
	Key         string
	Value       []byte    // shared with the store: callers must not modify it
	ModRevision int64     // revision of the last put of this key; 0 for no entry
	ExpireTime  time.Time // wall-clock expiry, in UTC; zero when the key has no TTL
}

// PutOptions controls a Put. The zero value is an unconditional put that
// clears any TTL the key had.
type PutOptions struct {
	TTL     time.Duration // > 0: expire TTL after the commit; 0: no TTL; < 0 is invalid
	KeepTTL bool          // keep the existing key's expiry (none if the key is absent); TTL must be 0
	// ExpireAt, when set, is the key's absolute expiry, for copying a key
	// from another store without extending its TTL; TTL and KeepTTL must
	// then be unset. A time already passed stores a key that is expired at
	// once; one at or before the Unix epoch is invalid.
	ExpireAt  time.Time
	Condition Condition // the put happens only if it holds
}

// PutResult describes a Put.
type PutResult struct {
	Revision    int64 // revision of the put; the current revision if the condition failed
	Previous    Entry // the live entry before the put, when HadPrevious
	HadPrevious bool
}

// DeleteResult describes a Delete.
type DeleteResult struct {
	Revision int64 // revision of the delete; the current revision if nothing was deleted
	Previous Entry // the live entry before the call; ModRevision is 0 if there was none
	Deleted  bool
}

// Store is a sharded in-memory key-value store. All methods are safe for
// concurrent use. Create one with New; call Close when done.
type Store struct {
	shards   []shard
	mask     uint64
	seed     maphash.Seed
	now      func() time.Time
	hook     func(Change)
	interval time.Duration
	sample   int

	// commitMu makes "assign revision, call hook" atomic so the hook sees
	// revisions in order; it is taken inside shard locks, never around them.
	commitMu sync.Mutex
	rev      atomic.Int64
	closed   atomic.Bool

	cycleMu    sync.Mutex // serialises expiry cycles
	expireNext int        // shard the next expiry cycle starts at; guarded by cycleMu

	lifeMu    sync.Mutex // orders Start against Close
	started   bool
	closeOnce sync.Once
	stopc     chan struct{}
	loopc     chan struct{} // closed when the expiry loop returns
	donec     chan struct{}
}

// New returns an empty store. It does not start the active-expiry loop; call
// Start for that. Without it, expired keys are still hidden and are removed
// when touched.
func New(opts ...Option) *Store {
	cfg := defaultConfig()
	for _, opt := range opts {
		opt(&cfg)
	}
	s := &Store{
		shards:   make([]shard, cfg.shards),
		mask:     uint64(cfg.shards - 1),
		seed:     maphash.MakeSeed(),
		now:      cfg.now,
		hook:     cfg.hook,
		interval: cfg.expiryInterval,
		sample:   cfg.expirySample,
		stopc:    make(chan struct{}),
		loopc:    make(chan struct{}),
		donec:    make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].init()
	}
	return s
}

// Start starts the active-expiry loop. It does nothing if the loop is
// already running or the store is closed.
func (s *Store) Start() {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.started || s.closed.Load() {
		return
	}
	s.started = true
	go s.runExpiry()
}

// Close stops the active-expiry loop and waits for it to return. Once Close
// has returned, writes fail with ErrClosed and no change is reported; Get and
// Scan keep working but no longer remove expired keys. Close is idempotent
// and always returns nil.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.lifeMu.Lock()
		// Taking commitMu guarantees no hook call is in flight once Close returns.
		s.commitMu.Lock()
		s.closed.Store(true)
		s.commitMu.Unlock()
		started := s.started
		s.lifeMu.Unlock()

		close(s.stopc)
		if started {
			<-s.loopc
		}
		close(s.donec)
	})
	return nil
}

// Done returns a channel that is closed once Close has finished.
func (s *Store) Done() <-chan struct{} {
	return s.donec
}

// Revision returns the last revision assigned, or advanced to by Apply.
func (s *Store) Revision() int64 {
	return s.rev.Load()
}

// Len returns the number of keys held, including expired keys that have not
// been removed yet.
func (s *Store) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		n += len(sh.items)
		sh.mu.RUnlock()
	}
	return n
}

// Get returns the live entry for key. Finding an expired key removes it and
// reports an OpExpire change (unless the store is closed).
func (s *Store) Get(key string) (Entry, bool) {
	sh := s.shardFor(key)
	sh.mu.RLock()
	it, ok := sh.items[key]
	sh.mu.RUnlock()
	if !ok {
		return Entry{}, false
	}
	// Only keys with a TTL pay for reading the clock. Building the entry
	// here rather than calling item.entry, which the compiler does not
	// inline, more than halved BenchmarkGet's time.
	if it.hasTTL() {
		return s.getTTL(sh, key, it)
	}
	return Entry{Key: key, Value: it.value, ModRevision: it.modRev}, true
}

// getTTL finishes a Get of a key with a TTL whose item was it.
func (s *Store) getTTL(sh *shard, key string, it item) (Entry, bool) {
	now := s.now()
	if !it.expiredAt(now.UnixNano()) {
		return it.entry(key), true
	}

	sh.mu.Lock()
	defer sh.mu.Unlock()
	it, ok := sh.items[key]
	if !ok {
		return Entry{}, false
	}
	if !it.expiredAt(now.UnixNano()) {
		// A put replaced the expired item while we waited for the lock.
		return it.entry(key), true
	}
	// A closed store hides the key but may no longer mutate, so the error is moot.
	_ = s.expireLocked(sh, key, it, now)
	return Entry{}, false
}

// Put sets key to value and returns the revision of the change. The store
// takes ownership of value: the caller must not modify it afterwards.
//
// If the key is expired, its expiry is reported first (with its own
// revision) and the key is treated as absent. If opts.Condition does not
// hold, Put returns ErrConditionFailed, a result describing the current
// state, and consumes no revision. Invalid options or a key that is not valid
// UTF-8 give ErrInvalidOptions; a closed store gives ErrClosed.
func (s *Store) Put(key string, value []byte, opts PutOptions) (PutResult, error) {
	if opts.TTL < 0 {
		return PutResult{}, fmt.Errorf("put: negative ttl: %w", ErrInvalidOptions)
	}
	if opts.KeepTTL && opts.TTL != 0 {
		return PutResult{}, fmt.Errorf("put: keep ttl with a ttl: %w", ErrInvalidOptions)
	}
	if !opts.ExpireAt.IsZero() && (opts.TTL != 0 || opts.KeepTTL || opts.ExpireAt.UnixNano() <= 0) {
		return PutResult{}, fmt.Errorf("put: expire at with a ttl, keep ttl or before the epoch: %w", ErrInvalidOptions)
	}
	if !utf8.ValidString(key) {
		return PutResult{}, fmt.Errorf("put: key is not utf-8: %w", ErrInvalidOptions)
	}
	if s.closed.Load() {
		return PutResult{}, ErrClosed
	}

	sh := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()

	clock := lazyClock{now: s.now}
	old, ok, prev, err := s.liveLocked(sh, key, &clock)
	if err != nil {
		return PutResult{}, err
	}
	if !opts.Condition.holds(old, ok) {
		return PutResult{Revision: s.rev.Load(), Previous: prev, HadPrevious: ok}, ErrConditionFailed
	}

	it := item{value: value}
	switch {
	case opts.TTL > 0:
		// Expiry is wall-clock so that replaying a change on another node,
		// which only sees the wall time, reaches the same decision.
		it.expire = expireNanos(clock.get().Add(opts.TTL))
	case !opts.ExpireAt.IsZero():
		it.expire = expireNanos(opts.ExpireAt)
	case opts.KeepTTL && ok:
		it.expire = old.expire
	}
	c := Change{
		Op:          OpPut,
		Key:         key,
		Value:       value,
		Previous:    prev,
		HadPrevious: ok,
		ExpireTime:  expireTime(it.expire),
	}
	if s.hook != nil {
		c.CommitTime = clock.get()
	}
	if err := s.commit(&c); err != nil {
		return PutResult{}, err
	}
	it.modRev = c.Revision
	sh.set(key, old, ok, it)
	return PutResult{Revision: c.Revision, Previous: prev, HadPrevious: ok}, nil
}

// Delete removes key and returns the revision of the change. Deleting an
// absent (or expired) key is not an error: it returns Deleted=false and the
// current revision and reports nothing, except the expiry of an expired key.
//
// cond may be IfPresent or IfRevision; if it does not hold (an absent key
// fails both), Delete returns ErrConditionFailed with the current state.
// IfAbsent gives ErrInvalidOptions; a closed store gives ErrClosed.
func (s *Store) Delete(key string, cond Condition) (DeleteResult, error) {
	if cond.kind == condAbsent {
		return DeleteResult{}, fmt.Errorf("delete: if absent: %w", ErrInvalidOptions)
	}
	if s.closed.Load() {
		return DeleteResult{}, ErrClosed
	}

	sh := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()

	clock := lazyClock{now: s.now}
	old, ok, prev, err := s.liveLocked(sh, key, &clock)
	if err != nil {
		return DeleteResult{}, err
	}
	if !cond.holds(old, ok) {
		return DeleteResult{Revision: s.rev.Load(), Previous: prev}, ErrConditionFailed
	}
	if !ok {
		return DeleteResult{Revision: s.rev.Load()}, nil
	}

	c := Change{Op: OpDelete, Key: key, Previous: prev, HadPrevious: true}
	if s.hook != nil {
		c.CommitTime = clock.get()
	}
	if err := s.commit(&c); err != nil {
		return DeleteResult{}, err
	}
	sh.remove(key, old)
	return DeleteResult{Revision: c.Revision, Previous: prev, Deleted: true}, nil
}

// Apply replays a change taken from a log: OpPut sets the key with the
// change's value, revision and expiry, OpDelete and OpExpire remove it. A put
// whose ExpireTime has already passed leaves the key absent. Apply reports
// nothing to the change hook and advances the revision counter to
// c.Revision if that is higher.
//
// Apply is meant for replay before the store serves writes: mixing it with
// Put and Delete can give two changes the same revision. A change with an
// unknown op, a revision < 1 or a put of a key that is not valid UTF-8 gives
// ErrInvalidOptions; a closed store gives ErrClosed.
func (s *Store) Apply(c Change) error {
	switch c.Op {
	case OpPut:
		if !utf8.ValidString(c.Key) {
			return fmt.Errorf("apply: key is not utf-8: %w", ErrInvalidOptions)
		}
	case OpDelete, OpExpire:
	default:
		return fmt.Errorf("apply: unknown op %v: %w", c.Op, ErrInvalidOptions)
	}
	if c.Revision < 1 {
		return fmt.Errorf("apply: revision %d: %w", c.Revision, ErrInvalidOptions)
	}
	if s.closed.Load() {
		return ErrClosed
	}

	sh := s.shardFor(c.Key)
	sh.mu.Lock()
	old, ok := sh.items[c.Key]
	live := c.Op == OpPut && (c.ExpireTime.IsZero() || s.now().Before(c.ExpireTime))
	switch {
	case live:
		it := item{value: c.Value, modRev: c.Revision}
		if !c.ExpireTime.IsZero() {
			it.expire = expireNanos(c.ExpireTime)
		}
		sh.set(c.Key, old, ok, it)
	case ok:
		sh.remove(c.Key, old)
	}
	sh.mu.Unlock()
	s.AdvanceRevision(c.Revision)
	return nil
}

// AdvanceRevision raises the revision counter to rev if it is lower, so the
// next mutation gets rev+1. Replay calls it with the highest revision a log
// has seen, which may belong to a change whose key is gone, so that
// revisions never go backwards across restarts.
func (s *Store) AdvanceRevision(rev int64) {
	for {
		cur := s.rev.Load()
		if rev <= cur || s.rev.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// Range calls fn for every live entry, one shard at a time, until fn returns
// false. Each shard is copied under its read lock and fn runs unlocked, so
// fn may be slow (a snapshot writer) without holding up writes; the entries
// of one call are therefore not one point-in-time view of the whole store.
// Writes racing with Range are reported to the change hook as usual, which
// is what makes a log snapshot taken with Range plus the log written after
// it complete.
func (s *Store) Range(fn func(Entry) bool) {
	var batch []Entry
	for i := range s.shards {
		sh := &s.shards[i]
		now := s.now().UnixNano()
		batch = batch[:0]
		sh.mu.RLock()
		for key, it := range sh.items {
			if !it.expiredAt(now) {
				batch = append(batch, it.entry(key))
			}
		}
		sh.mu.RUnlock()
		for _, e := range batch {
			if !fn(e) {
				return
			}
		}
	}
}

// commit assigns the next revision to c and reports it to the hook. It must
// be called with the shard of c.Key write-locked and before the shard is
// changed, so that a closed store leaves the shard untouched.
func (s *Store) commit(c *Change) error {
	if s.hook == nil {
		// Without a hook nobody observes the order, so an atomic is enough.
		if s.closed.Load() {
			return ErrClosed
		}
		c.Revision = s.rev.Add(1)
		return nil
	}
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	c.Revision = s.rev.Add(1)
	s.hook(*c)
	return nil
}

// expireLocked reports the expiry of it and removes it. The shard must be
// write-locked and it must be the key's current, expired item.
func (s *Store) expireLocked(sh *shard, key string, it item, now time.Time) error {
	c := Change{
		Op:          OpExpire,
		Key:         key,
		Previous:    it.entry(key),
		HadPrevious: true,
		CommitTime:  now,
	}
	if err := s.commit(&c); err != nil {
		return err
	}
	sh.remove(key, it)
	return nil
}

// lazyClock reads the clock at most once, and only if asked: most operations
// touch keys without a TTL and never need the time.
// liveLocked returns key's item and entry for a write, treating an expired
// item as absent after reporting its expiry. The caller holds sh's write lock.
func (s *Store) liveLocked(sh *shard, key string, clock *lazyClock) (it item, ok bool, e Entry, err error) {
	it, ok = sh.items[key]
	if !ok {
		return item{}, false, Entry{}, nil
	}
	if it.hasTTL() && it.expiredAt(clock.nanos()) {
		return item{}, false, Entry{}, s.expireLocked(sh, key, it, clock.get())
	}
	return it, true, it.entry(key), nil
}

type lazyClock struct {
	now func() time.Time
	t   time.Time
	ok  bool
}

func (c *lazyClock) get() time.Time {
	if !c.ok {
		c.t, c.ok = c.now(), true
	}
	return c.t
}

func (c *lazyClock) nanos() int64 { return c.get().UnixNano() }
