package kvnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/platform/store"
)

// Timing of a move, on the target's side.
const (
	// moveLeaseTTL is the TTL of the lease a target holds while it needs
	// its sources frozen: a target that dies holds writes to the moving
	// keys up for at most about this long.
	moveLeaseTTL = 10 * time.Second
	// readyWait bounds how long a ready target waits for the other targets
	// of a removal before it lets its sources go and starts again, so one
	// target that cannot finish does not hold writes up indefinitely.
	readyWait = 5 * time.Second
	// drainWait bounds how long a target waits to apply its sources'
	// changes up to their freeze revisions (at most catchUpRevisions each
	// when it froze them).
	drainWait = 5 * time.Second
	// moveRetry is the pause before a copy or a move is tried again.
	moveRetry = 500 * time.Millisecond
	// movePoll is how often a target checks its copies' progress.
	movePoll = 10 * time.Millisecond
)

// mover is the target side of membership changes: while the change in
// progress moves keys to this node, it copies them from each source,
// follows the sources' changes, freezes the sources once caught up, and
// flips the ring once every target is ready. It also drops the keys this
// node holds but owns in neither the current ring nor the next one: keys
// that moved away, and copies of an abandoned change.
type mover struct {
	self    string
	store   *store.Store
	dur     durability
	now     func() time.Time // the store's clock
	metrics *handoffMetrics
	logger  *slog.Logger

	mu      sync.Mutex
	sources map[string]*sourceCopy // the current move's copies, by source; for Stats
	attempt atomic.Int64           // the epoch of the move in progress; 0 when none

	stopOnce sync.Once
	stopc    chan struct{} // closed by stop
}

// stop makes run return (after its move, if any, has stopped): the node is
// leaving. Call it while the cluster's etcd client still works, so that the
// move's lease is revoked and its sources let go at once.
func (m *mover) stop() { m.stopOnce.Do(func() { close(m.stopc) }) }

func newMover(n *Node) *mover {
	return &mover{
		self: n.cfg.NodeID, store: n.store, dur: n.durability(), now: n.cfg.Clock, metrics: n.handoffMetrics,
		logger: n.cfg.Logger, stopc: make(chan struct{}),
	}
}

// run follows the cluster until it stops, starting and stopping moves as
// changes come and go, and sweeping the keys the node no longer owns
// whenever its ring changes.
func (m *mover) run(c *cluster) {
	var (
		job     context.CancelFunc
		jobDone chan struct{}
		change  int64 // the change the job moves keys for (Snapshot.NextRevision)
	)
	stop := func() {
		if job != nil {
			job()
			<-jobDone
			job, jobDone, change = nil, nil, 0
			// What the stopped job copied after the last sweep goes now,
			// unless the ring says this node keeps it.
			select {
			case c.ringChanged <- struct{}{}:
			default:
			}
		}
	}
	defer stop()
	sweepDone := make(chan struct{})
	defer func() { <-sweepDone }()
	go func() {
		defer close(sweepDone)
		m.sweeper(c)
	}()
	snap, changed := c.watcher.Current()
	for {
		want := int64(0)
		if snap.Current != nil && snap.Next != nil && slices.Contains(discovery.Targets(snap.Current, snap.Next), m.self) {
			want = snap.NextRevision
		}
		var recheck <-chan time.Time
		if change != want {
			stop()
			// A move starts once the node's view has the change, so that the
			// sweeper, which reads the view, keeps what the move copies.
			if v := c.view.Load(); want != 0 && v.nextID != want {
				recheck = time.After(movePoll)
			} else if want != 0 {
				ctx, cancel := context.WithCancel(context.Background())
				job, jobDone, change = cancel, make(chan struct{}), want
				cur, next := snap.Current, snap.Next
				go func(done chan struct{}) {
					defer close(done)
					m.move(ctx, c, cur, next, want)
				}(jobDone)
			}
		}
		select {
		case <-c.stopc:
			return
		case <-m.stopc:
			return
		case <-changed:
			snap, changed = c.watcher.Current()
		case <-recheck:
		}
	}
}

// move runs the move of keys to this node for the change from cur to next
// until the ring flips (or ctx ends: the change was aborted or flipped by
// another target), starting again after any failure.
func (m *mover) move(ctx context.Context, c *cluster, cur, next *discovery.RingRecord, change int64) {
	m.attempt.Store(next.Epoch)
	defer m.attempt.Store(0)
	defer func() {
		m.mu.Lock()
		m.sources = nil
		m.mu.Unlock()
		m.metrics.sources.Set(0)
	}()
	m.logger.Info("moving keys to this node", slog.Int64("epoch", next.Epoch), slog.Any("sources", discovery.Sources(cur, next, m.self)))
	for ctx.Err() == nil {
		err := m.moveOnce(ctx, c, cur, next, change)
		if err == nil {
			return
		}
		if ctx.Err() == nil {
			m.logger.Warn("move interrupted; starting again", slog.Int64("epoch", next.Epoch), slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(moveRetry):
		}
	}
}

// moveOnce is one attempt at a move: copy, catch up, freeze, drain, mark
// ready and flip. It returns nil once the change is no longer in progress.
func (m *mover) moveOnce(ctx context.Context, c *cluster, cur, next *discovery.RingRecord, change int64) error {
	// A ready key left by an earlier attempt (this process's, or one before
	// a restart) would let the change flip while this one copies anew.
	rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	inProgress, err := discovery.ClearReady(rctx, c.client, change, next.Epoch, m.self)
	cancel()
	if err != nil {
		return err
	}
	if !inProgress {
		return nil
	}
	lease, err := c.client.Grant(ctx, int64(moveLeaseTTL/time.Second))
	if err != nil {
		return fmt.Errorf("etcd lease: %w", err)
	}
	leaseCtx, stopLease := context.WithCancel(ctx)
	defer func() {
		stopLease()
		rctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
		defer cancel()
		// Revoking the lease lets the sources go at once; if it fails they
		// let go when it expires.
		_, _ = c.client.Revoke(rctx, lease.ID)
	}()
	keep, err := c.client.KeepAlive(leaseCtx, lease.ID)
	if err != nil {
		return fmt.Errorf("etcd lease keep-alive: %w", err)
	}
	lost := make(chan struct{})
	go func() {
		defer close(lost)
		for range keep {
		}
	}()

	copyCtx, stopCopies := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopCopies()
	var copies []*sourceCopy
	for _, src := range discovery.Sources(cur, next, m.self) {
		sc := &sourceCopy{
			m: m, c: c, source: src,
			req: &clusterv1.CopyRequest{FromMembers: cur.Members, ToMembers: next.Members, Target: m.self},
		}
		copies = append(copies, sc)
		wg.Go(func() { sc.run(copyCtx, cur, next) })
	}
	m.mu.Lock()
	m.sources = map[string]*sourceCopy{}
	for _, sc := range copies {
		m.sources[sc.source] = sc
	}
	m.mu.Unlock()
	m.metrics.sources.Set(float64(len(copies)))

	wait := func(limit time.Duration, what string, done func() bool) error {
		t := time.NewTicker(movePoll)
		defer t.Stop()
		var deadline <-chan time.Time
		if limit > 0 {
			deadline = time.After(limit)
		}
		for !done() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-lost:
				return errors.New("lost the etcd lease")
			case <-deadline:
				return fmt.Errorf("%s took longer than %s", what, limit)
			case <-t.C:
			}
		}
		return nil
	}
	// 1. Copy and catch up with every source.
	if err := wait(0, "catching up", func() bool {
		for _, sc := range copies {
			if !sc.caughtUp() {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	// 2. Freeze the sources; each answers where its moving keys stopped.
	// Each source's incarnation is read first: a source that restarts
	// after this loses its freeze, and the flip then fails.
	frozen := make([]int64, len(copies))
	ready := discovery.Ready{Sources: map[string]int64{}}
	for i, sc := range copies {
		key := discovery.InstanceKey(kvv1connect.KVServiceName, sc.source)
		rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		incarnation, err := discovery.Incarnation(rctx, c.client, key)
		cancel()
		if err != nil {
			return fmt.Errorf("source %s: %w", sc.source, err)
		}
		rev, err := sc.freeze(ctx, next.Epoch, lease.ID)
		if err != nil {
			return fmt.Errorf("freeze %s: %w", sc.source, err)
		}
		frozen[i], ready.Sources[key] = rev, incarnation
		sc.state.Store(int32(clusterv1.HandoffState_HANDOFF_STATE_FROZEN))
	}
	// 3. Apply up to there; then nothing more comes, so the copies stop.
	if err := wait(drainWait, "applying the sources' last changes", func() bool {
		for i, sc := range copies {
			if sc.revision() < frozen[i] {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	stopCopies()
	wg.Wait()
	// 4. Everything applied is durable here before anyone routes to it.
	if err := m.dur.Wait(ctx, m.store.Revision()); err != nil {
		return fmt.Errorf("make the copied keys durable: %w", err)
	}
	rctx, cancel = context.WithTimeout(ctx, etcdTimeout)
	err = discovery.MarkReady(rctx, c.client, change, next.Epoch, m.self, ready, lease.ID)
	cancel()
	if errors.Is(err, discovery.ErrOtherChange) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, sc := range copies {
		sc.state.Store(int32(clusterv1.HandoffState_HANDOFF_STATE_READY))
	}
	m.logger.Info("holds every key moving to it; flipping the ring when every target does", slog.Int64("epoch", next.Epoch))
	// 5. Flip once every target is ready; any of them may.
	deadline := time.After(readyWait)
	for {
		snap, changed := c.watcher.Current()
		if snap.Next == nil || snap.NextRevision != change {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, etcdTimeout)
		flipped, err := discovery.Flip(rctx, c.client, change)
		cancel()
		switch {
		case errors.Is(err, discovery.ErrOtherChange):
			return nil
		case err != nil:
			m.logger.Warn("flip the ring", slog.Int64("epoch", next.Epoch), slog.Any("error", err))
		case flipped:
			m.logger.Info("flipped the ring", slog.Int64("epoch", next.Epoch), slog.Any("members", next.Members))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-lost:
			return errors.New("lost the etcd lease while ready")
		case <-deadline:
			return fmt.Errorf("the other targets were not ready within %s", readyWait)
		case <-changed:
		case <-time.After(time.Second):
		}
	}
}

// sourceCopy is the copy of the keys moving from one source, restarted
// from scratch whenever its stream breaks.
type sourceCopy struct {
	m      *mover
	c      *cluster
	source string
	req    *clusterv1.CopyRequest

	cur      atomic.Pointer[applier]
	state    atomic.Int32 // clusterv1.HandoffState
	attempts atomic.Int32
	lastErr  atomic.Pointer[string]
}

func (sc *sourceCopy) caughtUp() bool {
	a := sc.cur.Load()
	return a != nil && a.caughtUp.Load()
}

func (sc *sourceCopy) revision() int64 {
	if a := sc.cur.Load(); a != nil {
		return a.revision()
	}
	return 0
}

// progress reports the copy for NodeStats.
func (sc *sourceCopy) progress(epoch int64) *clusterv1.Handoff {
	h := &clusterv1.Handoff{Source: sc.source, Epoch: epoch, State: clusterv1.HandoffState(sc.state.Load()), Attempts: sc.attempts.Load()}
	if a := sc.cur.Load(); a != nil {
		if h.State == clusterv1.HandoffState_HANDOFF_STATE_COPYING && a.revision() > 0 {
			h.State = clusterv1.HandoffState_HANDOFF_STATE_FOLLOWING
		}
		h.KeysCopied = a.copied.Load()
		h.LagRevisions = a.lag()
	}
	if e := sc.lastErr.Load(); e != nil {
		h.LastError = *e
	}
	return h
}

// run copies until ctx ends: each attempt drops what an earlier one left
// and applies a new stream from the start.
func (sc *sourceCopy) run(ctx context.Context, cur, next *discovery.RingRecord) {
	from, err := ring.New(cur.Members)
	if err != nil {
		sc.fail(err)
		return
	}
	to, err := ring.New(next.Members)
	if err != nil {
		sc.fail(err)
		return
	}
	moving := func(key string) bool { return from.Owner(key) == sc.source && to.Owner(key) == sc.m.self }
	for ctx.Err() == nil {
		sc.attempts.Add(1)
		sc.state.Store(int32(clusterv1.HandoffState_HANDOFF_STATE_COPYING))
		err := sc.once(ctx, moving)
		if ctx.Err() != nil {
			return
		}
		sc.fail(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(moveRetry):
		}
	}
}

func (sc *sourceCopy) fail(err error) {
	msg := err.Error()
	sc.lastErr.Store(&msg)
	sc.m.logger.Warn("copy from a source broke; copying again", slog.String("source", sc.source), slog.Any("error", err))
}

func (sc *sourceCopy) once(ctx context.Context, moving func(string) bool) error {
	client, err := sc.client()
	if err != nil {
		return err
	}
	// What an earlier attempt copied may since have been deleted at the
	// source, before the new snapshot: start from nothing.
	if _, err := sc.m.purge(ctx, sc.c, func(_ *view, key string) bool { return moving(key) }); err != nil {
		return err
	}
	a := newApplier(sc.m.store, sc.m.now)
	a.onApply = sc.m.metrics.copied.Inc
	sc.cur.Store(a)
	stream, err := client.Copy(ctx, connect.NewRequest(sc.req))
	if err != nil {
		return err
	}
	defer stream.Close()
	_, err = a.run(stream)
	if err == nil {
		err = errors.New("the source ended the copy")
	}
	return err
}

func (sc *sourceCopy) freeze(ctx context.Context, epoch int64, lease clientv3.LeaseID) (int64, error) {
	client, err := sc.client()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, peerCallTimeout)
	defer cancel()
	resp, err := client.Freeze(ctx, connect.NewRequest(&clusterv1.FreezeRequest{
		FromMembers: sc.req.GetFromMembers(), ToMembers: sc.req.GetToMembers(), Target: sc.m.self,
		Epoch: epoch, LeaseId: int64(lease),
	}))
	if err != nil {
		return 0, err
	}
	return resp.Msg.GetRevision(), nil
}

// client returns a HandoffService client for the source, which must be
// live.
func (sc *sourceCopy) client() (clusterv1connect.HandoffServiceClient, error) {
	inst, ok := sc.c.watcher.Snapshot().Instances[kvv1connect.KVServiceName][sc.source]
	if !ok {
		return nil, fmt.Errorf("source %s is not live", sc.source)
	}
	url, err := inst.DialURL(sc.c.requireTLS)
	if err != nil {
		return nil, err
	}
	return clusterv1connect.NewHandoffServiceClient(sc.c.http, url,
		connect.WithGRPC(), connect.WithInterceptors(sc.c.clientInterceptors...)), nil
}

// purge drops, as internal records, the keys held here that match and that
// this node does not own by the ring it routes by when it drops them (a key
// it owns is never dropped, whatever the caller's idea of the rings), until
// ctx ends. Each key's ownership is read as it is dropped, and the delete
// requires the revision the walk saw: a key written since (a copy applied
// under a newer view) stays.
func (m *mover) purge(ctx context.Context, c *cluster, match func(v *view, key string) bool) (int, error) {
	var (
		err error
		n   int
	)
	m.store.Range(func(e store.Entry) bool {
		if err = ctx.Err(); err != nil {
			return false
		}
		v := c.view.Load()
		if v.ring.Owner(e.Key) == m.self || !match(v, e.Key) {
			return true
		}
		_, err = m.store.Delete(e.Key, store.IfRevision(e.ModRevision))
		switch {
		case err == nil:
			n++
		case errors.Is(err, store.ErrConditionFailed):
			err = nil
		}
		return err == nil
	})
	return n, err
}

// sweeper drops, whenever the node's ring changes, the keys it owns in
// neither the ring it routes by nor the next one. It runs until the node
// leaves the cluster.
func (m *mover) sweeper(c *cluster) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.stopc:
		case <-m.stopc:
		}
		cancel()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.ringChanged:
		}
		n, err := m.purge(ctx, c, func(v *view, key string) bool {
			return v.next == nil || v.next.Owner(key) != m.self
		})
		if err != nil {
			if ctx.Err() == nil {
				m.logger.Warn("drop keys this node no longer owns", slog.Any("error", err))
			}
			continue
		}
		if n > 0 {
			m.metrics.dropped.Add(float64(n))
			m.logger.Info("dropped keys this node no longer owns", slog.Int("keys", n), slog.Int64("epoch", c.view.Load().epoch))
		}
	}
}

// handoffs reports the move in progress for NodeStats.
func (m *mover) handoffs() []*clusterv1.Handoff {
	epoch := m.attempt.Load()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*clusterv1.Handoff
	for _, sc := range m.sources {
		out = append(out, sc.progress(epoch))
	}
	slices.SortFunc(out, func(a, b *clusterv1.Handoff) int { return strings.Compare(a.GetSource(), b.GetSource()) })
	return out
}
