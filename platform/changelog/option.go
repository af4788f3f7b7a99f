package changelog

import (
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fluxkv/fluxkv/platform/store"
)

// Option configures Open.
type Option func(*config)

type config struct {
	fs              FS
	policy          Policy
	logger          *slog.Logger
	registerer      prometheus.Registerer
	bufferLimit     int
	stallTimeout    time.Duration
	syncInterval    time.Duration
	slowSync        time.Duration
	rewriteMinBytes int64
	rewriteGrowth   int
	snapshot        func(func(store.Entry) bool)
	retention       func() int64
	tailEvents      int
	tailBytes       int
	failpoint       func(step string) error
}

func defaultConfig() config {
	return config{
		fs:              OSFS{},
		policy:          FsyncEverySec,
		logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		bufferLimit:     64 << 20,
		stallTimeout:    5 * time.Second,
		syncInterval:    time.Second,
		slowSync:        2 * time.Second,
		rewriteMinBytes: 64 << 20,
		rewriteGrowth:   100,
		failpoint:       func(string) error { return nil },
	}
}

// WithPolicy sets the fsync policy (default FsyncEverySec).
func WithPolicy(p Policy) Option { return func(c *config) { c.policy = p } }

// WithFS replaces the operating system's file system, for tests.
func WithFS(fsys FS) Option { return func(c *config) { c.fs = fsys } }

// WithLogger sets where warnings (torn tails, slow disks, rewrites) go.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithRegisterer registers the log's Prometheus metrics with r.
func WithRegisterer(r prometheus.Registerer) Option { return func(c *config) { c.registerer = r } }

// WithBufferLimit bounds the bytes of records waiting for the disk; writers
// wait in Reserve beyond it (default 64 MiB).
func WithBufferLimit(n int) Option { return func(c *config) { c.bufferLimit = n } }

// WithStallTimeout is how long Reserve and Wait wait for a stalled disk
// before failing with ErrStalled (default 5s).
func WithStallTimeout(d time.Duration) Option { return func(c *config) { c.stallTimeout = d } }

// WithSyncInterval sets the background fsync period of FsyncEverySec
// (default one second).
func WithSyncInterval(d time.Duration) Option { return func(c *config) { c.syncInterval = d } }

// WithRewriteThreshold makes the log rewrite itself when it is at least
// minBytes long and has grown by growthPercent since the last rewrite (or
// since it was opened), like Redis's auto-aof-rewrite-min-size and
// auto-aof-rewrite-percentage (defaults 64 MiB and 100). growthPercent 0
// turns automatic rewrites off.
func WithRewriteThreshold(minBytes int64, growthPercent int) Option {
	return func(c *config) { c.rewriteMinBytes, c.rewriteGrowth = minBytes, growthPercent }
}

// WithSnapshot supplies the live entries a rewrite writes into the new base
// segment: normally (*store.Store).Range. Without it the log never rewrites.
func WithSnapshot(rangeFn func(func(store.Entry) bool)) Option {
	return func(c *config) { c.snapshot = rangeFn }
}

// WithRetention tells the log how far a reader that comes and goes (the
// CDC relay, across restarts) has got: done returns the highest revision
// it has finished with, and the log keeps every event after it, through
// rewrites, until done moves past them. Open Readers are kept for without
// this option.
func WithRetention(done func() int64) Option { return func(c *config) { c.retention = done } }

// WithEventTail bounds the recent events the log keeps in memory for its
// readers (defaults DefaultTailEvents and DefaultTailBytes); readers
// further behind read the segment files.
func WithEventTail(events, bytes int) Option {
	return func(c *config) { c.tailEvents, c.tailBytes = events, bytes }
}
