package kvnode

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/ring"
	"github.com/fluxkv/fluxkv/platform/store"
)

// copyEntryOverhead is what one entry of a snapshot batch costs on the wire
// besides its key and value (tags, lengths, revision, expiry), roughly, so
// that batches of many small entries are cut at watchResponseBytes too.
const copyEntryOverhead = 32

// copyProgress is how long a Copy stream stays silent before it reports
// its position: the target takes a report with nothing queued behind it as
// the sign that it has caught up, so it comes soon.
const copyProgress = 100 * time.Millisecond

// handoffService serves flux.cluster.v1.HandoffService: the source side of
// moving keys to another node while the ring changes. It reads this node's
// store and change log only and never forwards a call.
type handoffService struct {
	self    string
	metrics *handoffMetrics
	store   *store.Store
	events  changelog.Events
	router  *router     // tells when the node starts leaving
	limits  watchConfig // a Copy stream buffers and cuts off slow targets like a Watch
}

func newHandoffService(n *Node) clusterv1connect.HandoffServiceHandler {
	limits := defaultWatchConfig()
	limits.progress = copyProgress
	return &handoffService{self: n.cfg.NodeID, metrics: n.handoffMetrics, store: n.store, events: n.events, router: n.router, limits: limits}
}

// Copy streams the keys moving from this node to the request's target. See
// copy.
func (s *handoffService) Copy(ctx context.Context, req *connect.Request[clusterv1.CopyRequest], stream *connect.ServerStream[clusterv1.CopyResponse]) error {
	return s.copy(ctx, req.Msg, stream.Send)
}

// copy sends, through send, the moving entries of this node's store, then
// SnapshotDone with the revision R0 the walk started at, then the changes
// to moving keys after R0, until ctx ends. The reader of changes is opened
// at R0 before the walk starts, so a write racing with the walk is either
// seen by it or read as a change (or both); none is missed.
//
// Like a Watch, the stream reads the log at its own pace and hands
// responses to the sending goroutine through a bounded queue: a target
// that stops reading is cut off once the queue has stayed full for
// limits.slow, rather than holding the log's segments (or falling out of
// the in-memory tail) for ever.
func (s *handoffService) copy(ctx context.Context, msg *clusterv1.CopyRequest, send func(*clusterv1.CopyResponse) error) error {
	moving, err := s.moving(msg)
	if err != nil {
		return err
	}
	ctx, stop := untilDraining(ctx, s.router)
	defer stop()
	from := s.store.Revision()
	r, err := s.events.NewReader(from)
	if err != nil {
		return copyError(s.self, err)
	}
	defer r.Close()
	src := newLocalSource(s.self, from)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	items := make(chan *clusterv1.CopyResponse, s.limits.buffer)
	errc := make(chan error, 1)
	wg.Go(func() { errc <- s.produce(ctx, r, from, moving, src, items) })
	sender := &copySender{progress: s.limits.progress, send: send, src: src, head: s.store.Revision}
	return copyError(s.self, sender.run(ctx, items, errc))
}

// moving checks the request against this node and returns the filter of
// the keys that move from it to the target.
func (s *handoffService) moving(msg *clusterv1.CopyRequest) (func(string) bool, error) {
	if !slices.Contains(msg.GetFromMembers(), s.self) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"node %s is not one of from_members: it owns no keys in that ring", s.self))
	}
	target := msg.GetTarget()
	if target == s.self {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("target %s is the node asked: a node does not copy to itself", target))
	}
	vnodes := int(msg.GetVirtualNodes())
	if vnodes == 0 {
		vnodes = ring.DefaultVirtualNodes
	}
	// The schema's rules make these fail only for a caller that skips
	// validation; the ring's message names the offending member.
	current, err := ring.New(msg.GetFromMembers(), ring.WithVirtualNodes(vnodes))
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("from_members: %w", err))
	}
	next, err := ring.New(msg.GetToMembers(), ring.WithVirtualNodes(vnodes))
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("to_members: %w", err))
	}
	return func(key string) bool { return current.Owner(key) == s.self && next.Owner(key) == target }, nil
}

// produce queues the snapshot, SnapshotDone and then the changes read from
// r for the sender, until ctx ends or something fails. Queued responses are
// at most about watchResponseBytes each, which with the queue's length
// bounds what a copy holds in memory.
func (s *handoffService) produce(ctx context.Context, r *changelog.Reader, from int64, moving func(string) bool, src *localSource, out chan<- *clusterv1.CopyResponse) error {
	// Counted before it is queued and covered after, as readLocal does, so
	// the sender's progress never reports a revision past an unsent change.
	queue := func(resp *clusterv1.CopyResponse) error {
		src.queued.Add(1)
		return offer(ctx, out, resp, s.limits.slow)
	}
	if err := s.walk(ctx, moving, queue); err != nil {
		return err
	}
	if err := queue(&clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_SnapshotDone{
		SnapshotDone: &clusterv1.SnapshotDone{Revision: from},
	}}); err != nil {
		return err
	}
	changes := func(events []*cdcv1.ChangeEvent, through int64) *clusterv1.CopyResponse {
		return &clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_Changes{
			Changes: &clusterv1.CopyChanges{Events: events, Revision: through},
		}}
	}
	// Internal records count: a key this node received in an earlier move
	// is as much its as any other.
	return readMatching(ctx, r, func(e changelog.Event) bool { return moving(e.Key) }, func(events []*cdcv1.ChangeEvent, through int64) error {
		switch {
		case len(events) > 0:
			if err := queue(changes(events, through)); err != nil {
				return err
			}
		case src.queued.Load() == 0:
			// Nothing matched: tell the target how far the copy got while
			// it is keeping up, and never wait for it. A target that is
			// behind learns the position from what it has still to read,
			// or from the sender's idle progress.
			src.queued.Add(1)
			select {
			case out <- changes(nil, through):
			default:
				src.queued.Add(-1)
			}
		}
		src.covered.Store(through)
		return nil
	})
}

// walk queues the moving entries of the store in batches.
func (s *handoffService) walk(ctx context.Context, moving func(string) bool, queue func(*clusterv1.CopyResponse) error) error {
	var (
		batch []*clusterv1.CopyEntry
		size  int
		err   error
	)
	flush := func() error {
		resp := &clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_Entries{Entries: &clusterv1.CopyEntries{Entries: batch}}}
		batch, size = nil, 0
		return queue(resp)
	}
	s.store.Range(func(e store.Entry) bool {
		if err = ctx.Err(); err != nil {
			return false
		}
		if !moving(e.Key) {
			return true
		}
		n := len(e.Key) + len(e.Value) + copyEntryOverhead
		if len(batch) > 0 && size+n > watchResponseBytes {
			if err = flush(); err != nil {
				return false
			}
		}
		ce := &clusterv1.CopyEntry{Key: e.Key, Value: e.Value, Revision: e.ModRevision}
		if !e.ExpireTime.IsZero() {
			ce.ExpireTime = timestamppb.New(e.ExpireTime)
		}
		batch = append(batch, ce)
		size += n
		return true
	})
	if err != nil {
		return err
	}
	if len(batch) > 0 {
		return flush()
	}
	return nil
}

// copySender writes a Copy stream's responses on the handler's goroutine,
// and progress reports when the stream is idle.
type copySender struct {
	progress time.Duration
	send     func(*clusterv1.CopyResponse) error
	src      *localSource
	head     func() int64 // the source's last revision, for the target's lag
	snapshot bool         // SnapshotDone has been sent
	sent     int64        // the revision the stream last reported
	idle     bool         // a report went out since the last response
}

// run sends until the producer fails or ctx ends; when ctx has ended, its
// cause is the answer.
func (s *copySender) run(ctx context.Context, items <-chan *clusterv1.CopyResponse, errc <-chan error) error {
	err := s.loop(ctx, items, errc)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

func (s *copySender) loop(ctx context.Context, items <-chan *clusterv1.CopyResponse, errc <-chan error) error {
	idle := time.NewTimer(s.progress)
	defer idle.Stop()
	for {
		select {
		case resp := <-items:
			if err := s.deliver(resp); err != nil {
				return err
			}
			idle.Reset(s.progress)
		case <-idle.C:
			if err := s.report(); err != nil {
				return err
			}
			idle.Reset(s.progress)
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *copySender) deliver(resp *clusterv1.CopyResponse) error {
	defer s.src.queued.Add(-1)
	s.idle = false
	switch item := resp.GetItem().(type) {
	case *clusterv1.CopyResponse_SnapshotDone:
		s.snapshot = true
		s.sent = item.SnapshotDone.GetRevision()
	case *clusterv1.CopyResponse_Changes:
		rev := item.Changes.GetRevision()
		if len(item.Changes.GetEvents()) == 0 && rev <= s.sent {
			return nil // a progress report the idle one already overtook
		}
		s.sent = max(s.sent, rev)
		item.Changes.SourceRevision = s.head()
	}
	return s.send(resp)
}

// report sends how far the reader has read once everything it queued has
// been sent (see watchSender.progress for why that order is safe), if that
// is further than the stream has reported.
func (s *copySender) report() error {
	if !s.snapshot {
		return nil
	}
	covered := s.src.covered.Load()
	// Once per silence even when the position did not move: it tells the
	// target that nothing is queued behind what it has.
	if s.src.queued.Load() != 0 || (covered <= s.sent && s.idle) {
		return nil
	}
	s.sent, s.idle = max(s.sent, covered), true
	return s.send(&clusterv1.CopyResponse{Item: &clusterv1.CopyResponse_Changes{Changes: &clusterv1.CopyChanges{Revision: s.sent, SourceRevision: s.head()}}})
}

// copyError maps the errors that end a Copy stream. The target's answer to
// ABORTED and RESOURCE_EXHAUSTED is the same: copy again from the start.
func copyError(node string, err error) error {
	var compacted *changelog.CompactedError
	if errors.As(err, &compacted) {
		return connect.NewError(connect.CodeAborted, fmt.Errorf(
			"copy fell behind: node %s no longer holds changes the copy has yet to send (its oldest is revision %d); "+
				"restart the copy", node, compacted.Oldest))
	}
	return logStreamError(err,
		"copy cut off: the target stopped reading while changes kept coming; restart the copy",
		"the node is shutting down; restart the copy when it is back")
}
