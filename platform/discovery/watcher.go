package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watcher keeps a snapshot of /flux/ current: it loads both prefixes, then
// watches from the next revision, resumes after a dropped watch and loads
// everything again after a compaction error.
type Watcher struct {
	client *clientv3.Client
	logger *slog.Logger

	mu      sync.Mutex
	snap    *Snapshot
	changec chan struct{} // closed and replaced on every change

	closeOnce sync.Once
	cancel    context.CancelFunc
	donec     chan struct{}
}

// NewWatcher returns a watcher; Start it before use.
func NewWatcher(client *clientv3.Client, logger *slog.Logger) *Watcher {
	if logger == nil {
		logger = slog.Default()
	}
	return &Watcher{client: client, logger: logger, changec: make(chan struct{}), donec: make(chan struct{})}
}

// Start loads the current state and starts watching. It fails if the first
// load does not succeed before ctx ends.
func (w *Watcher) Start(ctx context.Context) error {
	snap, err := w.load(ctx)
	if err != nil {
		return err
	}
	w.startFrom(snap)
	return nil
}

// startFrom publishes snap and watches from the revision after it.
func (w *Watcher) startFrom(snap *Snapshot) {
	w.publish(snap)
	runCtx, cancel := context.WithCancel(context.Background())
	w.mu.Lock()
	w.cancel = cancel
	w.mu.Unlock()
	go w.run(runCtx)
}

// Snapshot returns the current state. It is shared: callers must not
// modify it.
func (w *Watcher) Snapshot() *Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.snap
}

// Current returns the current state and a channel closed at the next
// change, read together so that no change falls between them: a loop that
// acts on the snapshot and then waits on the channel never misses one.
func (w *Watcher) Current() (*Snapshot, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.snap, w.changec
}

// Changed returns a channel that is closed at the next change.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changec
}

// Close stops watching. It is idempotent.
func (w *Watcher) Close() {
	w.closeOnce.Do(func() {
		w.mu.Lock()
		cancel := w.cancel
		w.mu.Unlock()
		if cancel != nil {
			cancel()
			<-w.donec
		}
	})
}

func (w *Watcher) publish(s *Snapshot) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.snap = s
	close(w.changec)
	w.changec = make(chan struct{})
}

func (w *Watcher) load(ctx context.Context) (*Snapshot, error) {
	resp, err := w.client.Get(ctx, Prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("load %s from etcd: %w", Prefix, err)
	}
	s := &Snapshot{Revision: resp.Header.Revision, Members: map[string]Member{}, Instances: map[string]map[string]Instance{}}
	for _, kv := range resp.Kvs {
		if err := s.apply(string(kv.Key), kv.Value, kv.CreateRevision); err != nil {
			w.logger.Warn("ignoring a discovery entry", slog.Any("error", err))
		}
	}
	return s, nil
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.donec)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := w.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			w.logger.Warn("discovery watch fell behind etcd's compaction; loading everything again")
			snap, lerr := w.load(ctx)
			if lerr == nil {
				w.publish(snap)
				backoff = 100 * time.Millisecond
				continue
			}
			err = lerr
		}
		w.logger.Warn("discovery watch interrupted; resuming", slog.Any("error", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// watch applies events until the watch ends, and says why it ended.
func (w *Watcher) watch(ctx context.Context) error {
	ctx = clientv3.WithRequireLeader(ctx)
	from := w.Snapshot().Revision + 1
	for resp := range w.client.Watch(ctx, Prefix, clientv3.WithPrefix(), clientv3.WithRev(from)) {
		if resp.CompactRevision != 0 {
			return rpctypes.ErrCompacted
		}
		if err := resp.Err(); err != nil {
			return err
		}
		if len(resp.Events) == 0 {
			continue
		}
		next := w.Snapshot().clone()
		// The revision is that of the last event applied, not the
		// response header's: the header may be ahead of events still to
		// come in a later response, and resuming after it would skip them.
		var last int64
		for _, ev := range resp.Events {
			last = max(last, ev.Kv.ModRevision)
			var value []byte
			if ev.Type == clientv3.EventTypePut {
				value = ev.Kv.Value
			}
			if err := next.apply(string(ev.Kv.Key), value, ev.Kv.CreateRevision); err != nil {
				w.logger.Warn("ignoring a discovery entry", slog.Any("error", err))
			}
		}
		next.Revision = max(next.Revision, last)
		w.publish(next)
	}
	return errors.New("watch channel closed")
}
