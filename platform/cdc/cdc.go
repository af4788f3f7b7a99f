// Package cdc is the change data capture relay: it reads a node's durable
// change log and publishes every event to a RabbitMQ topic exchange, so
// consumers outside the cluster see each change of the node, in revision
// order, at least once.
//
// The relay only reads the log (through Source); it never holds up the
// writers, however slow or absent the broker is. What it has delivered is
// recorded in a checkpoint: the highest revision up to which every event was
// confirmed by the broker (publisher confirms), persisted in a small file. On
// restart, reconnect or a negative confirm it publishes again from the
// checkpoint, so a crash or an outage delays events but never loses them;
// consumers drop the duplicates by message id (<node-id>:<revision>). The
// log must keep every event above Checkpoint; OnCheckpoint reports when it
// may drop more.
//
// Events are published in revision order, so each one first reaches a queue
// after the ones before it, with one exception: when the broker refuses an
// event (a nack, as a full queue with overflow reject-publish sends) but
// takes later ones, the refused event arrives again after them. Consumers
// should therefore deduplicate by message id, not by the highest revision
// seen.
//
// Messages go to a durable topic exchange (DefaultExchange) with routing key
// <op>.<node-id> (op is put, delete or expire). The body is the
// flux.cdc.v1.ChangeEvent protobuf as the log holds it; properties and
// headers carry the node id, revision, op and key so that brokers and
// consumers can route and deduplicate without decoding it. Node ids may
// contain dots, so bindings that name a node should end in "#".
package cdc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/time/rate"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
)

// Defaults for Config fields left zero.
const (
	DefaultExchange           = "flux.cdc"
	DefaultWindow             = 1024
	DefaultCheckpointInterval = time.Second
	DefaultReconnectMin       = 100 * time.Millisecond
	DefaultReconnectMax       = 30 * time.Second
)

// CheckpointFile is the name of the checkpoint file in Config.CheckpointDir.
// It holds JSON, {"node_id": "n1", "revision": 42}, and is replaced
// atomically; deleting it makes the next relay publish the whole log again.
const CheckpointFile = "cdc.checkpoint"

// Event is one durable change as the node's log holds it.
type Event struct {
	Revision int64
	Op       cdcv1.Op
	Key      string
	Time     time.Time // commit time
	Data     []byte    // the flux.cdc.v1.ChangeEvent protobuf encoding, published as is
	// Internal marks a record the node never publishes (keys moving between
	// nodes): the relay passes over it, and its checkpoint moves past it
	// with the events around it.
	Internal bool
}

// Source is the node's log as the relay reads it. Its methods may be called
// from different goroutines at once.
type Source interface {
	// Read blocks until at least one durable event with a revision above
	// after exists (or ctx ends) and returns up to max of them in revision
	// order, without gaps. It returns ctx's error once ctx has ended.
	Read(ctx context.Context, after int64, max int) ([]Event, error)
	// Durable is the highest durable revision (for lag metrics).
	Durable() int64
}

// Config configures a Relay. URL, NodeID and CheckpointDir are required.
type Config struct {
	URL string // AMQP URL of the broker, e.g. amqp://guest:guest@127.0.0.1:5672/ (amqps:// for TLS)
	// TLS configures amqps:// connections (nil: the system's roots, no
	// client certificate; the URL's host is the name checked).
	TLS      *tls.Config
	NodeID   string // the node whose log is relayed: routing key, message id and headers carry it
	Exchange string // durable topic exchange, declared by the relay (default DefaultExchange)
	// Queue, if set, is a durable queue the relay declares and binds to the
	// exchange with "#", so events accumulate while no consumer is running.
	Queue string
	// Window bounds the events published but not yet confirmed (default
	// DefaultWindow): the memory held for the broker and the number of
	// events published again after a reconnect.
	Window             int
	CheckpointDir      string        // directory of the checkpoint file; created if missing
	CheckpointInterval time.Duration // how often a moving checkpoint is written (default 1s)
	// MaxLag and MaxLagAge bound how far the relay may fall behind the log
	// (in revisions, and as the age of the oldest unconfirmed event) before
	// it logs errors; 0 means no bound. Lag never blocks the node.
	MaxLag       int64
	MaxLagAge    time.Duration
	ReconnectMin time.Duration // first delay after a failed connection (default 100ms)
	ReconnectMax time.Duration // cap of the exponentially growing delay (default 30s)
	// OnCheckpoint, if set, is called with the new checkpoint each time a
	// higher one has been persisted, so that the node may drop older events
	// from its log. It is called from the relay's goroutine and must return
	// quickly without calling Close.
	OnCheckpoint func(rev int64)
	Logger       *slog.Logger          // nil discards the relay's logs
	Registerer   prometheus.Registerer // where the flux_cdc_* metrics go; nil registers none
}

func (c *Config) setDefaults() error {
	if c.URL == "" {
		return errors.New("cdc: URL is required")
	}
	uri, err := amqp.ParseURI(c.URL)
	if err != nil {
		// The parse error may quote the URL, password included.
		return errors.New("cdc: URL is not a valid amqp:// or amqps:// URL")
	}
	if c.TLS != nil && uri.Scheme != "amqps" {
		// amqp:// would send the password and every change in the clear,
		// ignoring the TLS configuration.
		return errors.New("cdc: TLS is configured, but the URL is amqp://; use amqps://")
	}
	if c.NodeID == "" {
		return errors.New("cdc: NodeID is required")
	}
	if c.CheckpointDir == "" {
		return errors.New("cdc: CheckpointDir is required")
	}
	if c.Exchange == "" {
		c.Exchange = DefaultExchange
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = DefaultCheckpointInterval
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = DefaultReconnectMin
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = max(DefaultReconnectMax, c.ReconnectMin)
	}
	switch {
	case c.Window < 0:
		return fmt.Errorf("cdc: Window %d is negative", c.Window)
	case c.CheckpointInterval < 0 || c.MaxLag < 0 || c.MaxLagAge < 0:
		return errors.New("cdc: CheckpointInterval, MaxLag and MaxLagAge must not be negative")
	case c.ReconnectMin < 0 || c.ReconnectMax < c.ReconnectMin:
		return fmt.Errorf("cdc: want 0 <= ReconnectMin <= ReconnectMax, got %v and %v", c.ReconnectMin, c.ReconnectMax)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Relay publishes one node's log to RabbitMQ. Create it with New, then call
// Start; Close stops it.
type Relay struct {
	cfg     Config
	src     Source
	log     *slog.Logger
	metrics *metrics
	file    string // checkpoint file

	confirmed atomic.Int64 // highest revision confirmed with every one below it
	persisted atomic.Int64 // confirmed as of the last checkpoint written: Checkpoint
	oldest    atomic.Int64 // commit time (Unix ns) of the oldest event read but unconfirmed; 0 if none

	mu      sync.Mutex
	started bool
	closed  bool

	stopCtx   context.Context    // ends when Close starts: read no more events
	stop      context.CancelFunc // ends stopCtx
	killCtx   context.Context    // ends when Close gives up waiting for confirms
	kill      context.CancelFunc // ends killCtx
	donec     chan struct{}      // closed when the relay's goroutines have ended
	closeOnce sync.Once
	closeErr  error

	// Owned by the relay's goroutine.
	unwatch   func() bool // stops closing the current socket on kill
	lastSave  time.Time
	saveErr   error // of the final checkpoint write, read by Close after donec
	downSince time.Time

	// Repeated warnings are logged at most every 30s, with running totals.
	connectLog, saveLog, readLog, returnLog, nackLog, lagLog rate.Sometimes
	returned, nacked                                         atomic.Int64
}

// New returns a relay for the node's log src, resuming from the checkpoint
// in cfg.CheckpointDir (0 if there is none). It fails if cfg is invalid, the
// checkpoint cannot be read or belongs to another node, or the metrics
// cannot be registered. Nothing is connected until Start.
func New(cfg Config, src Source) (*Relay, error) {
	if src == nil {
		return nil, errors.New("cdc: nil Source")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.CheckpointDir, 0o755); err != nil {
		return nil, fmt.Errorf("cdc: checkpoint dir: %w", err)
	}
	rev, err := loadCheckpoint(checkpointPath(cfg.CheckpointDir), cfg.NodeID)
	if err != nil {
		return nil, err
	}
	r := &Relay{
		cfg:   cfg,
		src:   src,
		log:   cfg.Logger.With("component", "cdc", "exchange", cfg.Exchange),
		file:  checkpointPath(cfg.CheckpointDir),
		donec: make(chan struct{}),
	}
	for _, s := range []*rate.Sometimes{&r.connectLog, &r.saveLog, &r.readLog, &r.returnLog, &r.nackLog, &r.lagLog} {
		s.Interval = 30 * time.Second
	}
	r.confirmed.Store(rev)
	r.persisted.Store(rev)
	if r.metrics, err = newMetrics(cfg.Registerer, r); err != nil {
		return nil, fmt.Errorf("cdc: register metrics: %w", err)
	}
	r.metrics.checkpoint.Set(float64(rev))
	r.stopCtx, r.stop = context.WithCancel(context.Background())
	r.killCtx, r.kill = context.WithCancel(context.Background())
	return r, nil
}

// Start connects to the broker and relays events in the background until
// Close. A broker that is down or refuses the relay is retried with capped
// exponential backoff; Start itself never fails or blocks. Calling Start
// again, or after Close, does nothing.
func (r *Relay) Start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started || r.closed {
		return
	}
	r.started = true
	go r.run()
}

// Close stops reading the log, waits until the events already published are
// confirmed or ctx ends, persists the checkpoint and closes the connection.
// Events left unconfirmed are published again by the next relay started on
// the same CheckpointDir. Close returns ctx's error if it gave up waiting, or
// the error of the final checkpoint write. It is safe to call more than once.
func (r *Relay) Close(ctx context.Context) error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		started := r.started
		r.mu.Unlock()
		r.stop()
		defer r.kill()
		if !started {
			close(r.donec)
			return
		}
		select {
		case <-r.donec:
		case <-ctx.Done():
			r.kill()
			<-r.donec
			r.closeErr = fmt.Errorf("cdc: close: gave up waiting for confirms: %w", ctx.Err())
		}
		r.closeErr = errors.Join(r.closeErr, r.saveErr)
	})
	return r.closeErr
}

// Done is closed once the relay has stopped after Close.
func (r *Relay) Done() <-chan struct{} { return r.donec }

// Checkpoint is the persisted checkpoint: every event up to this revision
// was confirmed by the broker. The log must keep the events above it, which
// the relay publishes again after a restart.
func (r *Relay) Checkpoint() int64 { return r.persisted.Load() }
