package kvnode

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/fluxkv/fluxkv/platform/cdc"
	"github.com/fluxkv/fluxkv/platform/changelog"
)

// relayDone is the log's retention for the CDC relay: the revision up to
// which the relay has confirmed every event, as persisted in its
// checkpoint. Without a relay nothing is held back for it.
func (n *Node) relayDone() int64 {
	if n.relay == nil {
		return math.MaxInt64
	}
	return n.relay.Checkpoint()
}

// relayCloseTimeout bounds how long shutdown waits for the broker to confirm
// what the relay has published; whatever is left is published again by the
// next start, from the checkpoint.
const relayCloseTimeout = 5 * time.Second

// closeRelay stops the relay, waiting a bounded time for outstanding
// confirms, and saves its checkpoint.
func (n *Node) closeRelay(ctx context.Context) error {
	if n.relay == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, relayCloseTimeout)
	defer cancel()
	err := n.relay.Close(ctx)
	n.relaySrc.close()
	return err
}

// newRelay creates the CDC relay when an AMQP URL is configured. It
// reads the node's events (the log, or the in-memory tail) and never
// blocks writers.
func (n *Node) newRelay() error {
	if n.cfg.AMQPURL == "" {
		return nil
	}
	if n.log == nil {
		// Without a log, revisions start again at 1 after a restart, so
		// message ids would repeat and consumers would drop new events as
		// duplicates of old ones.
		return errors.New("CDC needs the append-only file: without it revisions restart after a restart and consumers could not tell events apart")
	}
	n.relaySrc = &eventSource{events: n.events, logger: n.cfg.Logger}
	relay, err := cdc.New(cdc.Config{
		URL:           n.cfg.AMQPURL,
		TLS:           n.cfg.AMQPTLS,
		NodeID:        n.cfg.NodeID,
		Queue:         n.cfg.CDCQueue,
		CheckpointDir: n.cfg.DataDir,
		MaxLag:        n.cfg.CDCMaxLag,
		MaxLagAge:     n.cfg.CDCMaxLagAge,
		Logger:        n.cfg.Logger,
		Registerer:    n.registry,
	}, n.relaySrc)
	if err != nil {
		return err
	}
	// Under everysec or no, the relay may have published events that a
	// power loss then took from the log. Their revisions must not be given
	// to new writes: consumers would drop those as duplicates.
	if cp, rev := relay.Checkpoint(), n.store.Revision(); cp > rev {
		n.cfg.Logger.Error("cdc: RabbitMQ has events this node's log lost (a power loss under --appendfsync everysec or no); revisions continue after them",
			slog.Int64("log_revision", rev), slog.Int64("published_revision", cp))
		n.store.AdvanceRevision(cp)
	}
	n.relay = relay
	return nil
}

// eventSource adapts the node's events to the relay. It keeps one reader
// open where the relay left off, so following the log costs no lookups;
// a read from anywhere else (a resume after reconnecting, the relay's lag
// probe) gets a reader of its own.
type eventSource struct {
	events changelog.Events
	logger *slog.Logger

	mu     sync.Mutex
	reader *changelog.Reader // nil while in use or before the first read
	pos    int64             // where reader is
	closed bool
}

func (s *eventSource) Read(ctx context.Context, after int64, max int) ([]cdc.Event, error) {
	s.mu.Lock()
	r := s.reader
	if r != nil && s.pos == after {
		s.reader = nil
	} else {
		r = nil
	}
	s.mu.Unlock()
	if r == nil {
		var err error
		if r, err = s.open(after); err != nil {
			return nil, err
		}
	}
	events, err := r.Next(ctx, max)
	if err != nil {
		r.Close()
		return nil, err
	}
	out := make([]cdc.Event, len(events))
	for i, e := range events {
		out[i] = cdc.Event{Revision: e.Revision, Op: e.Op, Key: e.Key, Time: e.Time, Data: e.Data, Internal: e.Internal}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The relay's own reads ask for a window; a one-event read (its lag
	// probe) must not take the place of the reader it follows the log with.
	if s.closed || (max == 1 && s.reader != nil) {
		r.Close()
		return out, nil
	}
	if s.reader != nil {
		s.reader.Close()
	}
	s.reader, s.pos = r, events[len(events)-1].Revision
	return out, nil
}

// open returns a reader after after. Events the log no longer holds (CDC
// turned on for a node whose log was rewritten before, or a checkpoint
// file restored from elsewhere) cannot be published: that is logged
// loudly and the relay goes on from the oldest event left.
func (s *eventSource) open(after int64) (*changelog.Reader, error) {
	r, err := s.events.NewReader(after)
	var ce *changelog.CompactedError
	if errors.As(err, &ce) {
		s.logger.Error("cdc: the log no longer holds events the relay has not published; they are lost to RabbitMQ",
			slog.Int64("from", after+1), slog.Int64("to", ce.Oldest-1))
		return s.events.NewReader(ce.Oldest - 1)
	}
	return r, err
}

func (s *eventSource) Durable() int64 { return s.events.Durable() }

func (s *eventSource) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.reader != nil {
		s.reader.Close()
		s.reader = nil
	}
}
