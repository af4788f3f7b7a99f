package kvnode

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/platform/changelog"
)

// Watch tuning. The stream's limits are handler fields (watchConfig) so
// that tests can shrink them; these are their defaults.
const (
	defaultWatchProgress = 5 * time.Second
	// defaultWatchBuffer responses of at most about watchResponseBytes
	// each may wait for a slow client: at most about 16 MiB per watch.
	defaultWatchBuffer = 16
	defaultWatchSlow   = 10 * time.Second

	// watchReadBatch is how many events one read from the log returns at
	// most; matching ones go out together.
	watchReadBatch = 512
	// watchResponseBytes cuts the matching events of a read into responses
	// of at most this many bytes, so a response stays well under the 4 MiB
	// that gRPC clients accept by default (an event larger than this, at
	// most about twice the largest value, goes alone).
	watchResponseBytes = 1 << 20
)

// watchConfig holds the limits of Watch streams.
type watchConfig struct {
	progress time.Duration // idle time after which a stream gets a progress message
	buffer   int           // responses that may wait for a slow client
	slow     time.Duration // how long the buffer may stay full before the client is cut off
}

func defaultWatchConfig() watchConfig {
	return watchConfig{progress: defaultWatchProgress, buffer: defaultWatchBuffer, slow: defaultWatchSlow}
}

var (
	// errSlowConsumer ends a watch whose client has not read its stream
	// while changes kept coming.
	errSlowConsumer = errors.New("slow consumer")
	// errDraining ends watches when the node starts leaving.
	errDraining = errors.New("node is leaving")
)

// Watch streams the changes matching the request. A key watch is served by
// the key's owner (through this node when it is another); a prefix watch
// sent by a client to a clustered node merges the streams of every member;
// anything else is served from this node's log.
func (h *handler) Watch(ctx context.Context, req *connect.Request[kvv1.WatchRequest], stream *connect.ServerStream[kvv1.WatchResponse]) error {
	if h.events == nil {
		return connect.NewError(connect.CodeUnimplemented, errors.New("watch is not available on this node"))
	}
	ctx, cancel := h.untilDraining(ctx)
	defer cancel()
	msg := req.Msg
	from, err := decodeToken(msg.GetResumeToken())
	if err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	if key, ok := msg.GetTarget().(*kvv1.WatchRequest_Key); ok {
		client, err := h.router.target(req.Header(), key.Key)
		if err != nil {
			return err
		}
		if client != nil {
			return h.proxyWatch(ctx, client, msg, stream)
		}
	} else if c := h.router.coordinating(req.Header()); c != nil {
		if msg.GetStartRevision() > 0 {
			return connect.NewError(connect.CodeInvalidArgument, errors.New(
				"start_revision: revisions are counted per node, so a prefix watch of the whole cluster cannot start at one; "+
					"start from now (0) and resume with resume_token"))
		}
		return h.coordinateWatch(ctx, c, msg, from, stream)
	}
	return h.watchLocal(ctx, msg, from, stream)
}

// watchLocal serves a watch from this node's log alone.
func (h *handler) watchLocal(ctx context.Context, msg *kvv1.WatchRequest, from watchPositions, stream *connect.ServerStream[kvv1.WatchResponse]) error {
	after := h.events.Durable()
	switch {
	case msg.GetStartRevision() > 0:
		after = msg.GetStartRevision() - 1
	case msg.GetResumeToken() != "":
		after = from.startAfter(h.router.self)
	}
	r, err := h.openReader(after)
	if err != nil {
		return err
	}
	defer r.Close()
	src := newLocalSource(h.router.self, after)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	items := make(chan watchItem, h.watch.buffer)
	errc := make(chan error, 1)
	match := matcher(msg)
	wg.Go(func() { errc <- h.readLocal(ctx, r, match, src, items) })
	s := newWatchSender(h.watch, stream, src, watchPositions{h.router.self: after}, nil)
	return watchError(s.run(ctx, items, errc))
}

// untilDraining returns a context that also ends, with errDraining as its
// cause, when the node starts leaving.
func (h *handler) untilDraining(ctx context.Context) (context.Context, context.CancelFunc) {
	return untilDraining(ctx, h.router)
}

// untilDraining returns a context that also ends, with errDraining as its
// cause, when r's node starts leaving: the streams that never end on their
// own (Watch, HandoffService.Copy) use it so that they do not hold up a
// shutdown.
func untilDraining(ctx context.Context, r *router) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	draining := r.draining()
	go func() {
		select {
		case <-draining:
			cancel(errDraining)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(nil) }
}

// matcher returns the filter of a watch request's target.
func matcher(msg *kvv1.WatchRequest) func(string) bool {
	if key, ok := msg.GetTarget().(*kvv1.WatchRequest_Key); ok {
		return func(k string) bool { return k == key.Key }
	}
	prefix := msg.GetPrefix()
	return func(k string) bool { return strings.HasPrefix(k, prefix) }
}

// openReader opens a reader of this node's changes after revision after.
// A start the log no longer holds fails with FAILED_PRECONDITION and a
// WatchCompacted detail: skipping the missing changes silently would give
// the client a wrong picture.
func (h *handler) openReader(after int64) (*changelog.Reader, error) {
	r, err := h.events.NewReader(after)
	var compacted *changelog.CompactedError
	switch {
	case errors.As(err, &compacted):
		return nil, compactedError(h.router.self, after+1, compacted.Oldest)
	case err != nil:
		return nil, connect.NewError(connect.CodeInternal, errors.New("the change log cannot be read"))
	}
	return r, nil
}

func compactedError(node string, start, oldest int64) *connect.Error {
	err := connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
		"watch start: revision %d is older than the oldest change node %s still holds (revision %d); "+
			"read the current state with Scan and watch from now", start, node, oldest))
	addDetail(err, &kvv1.WatchCompacted{NodeId: node, OldestRevision: oldest})
	return err
}

// watchError maps the errors that end a watch stream.
func watchError(err error) error {
	return logStreamError(err,
		"watch cut off: the client stopped reading while changes kept coming and the server's buffer stayed full; "+
			"resume with the last resume_token and read faster",
		"the node is shutting down; resume the watch with the last resume_token")
}

// logStreamError maps the errors that end a stream reading this node's
// change log (Watch, handoff Copy): Connect errors pass through, and slow
// and closing are the messages for a client cut off for not reading and
// for a node that is shutting down.
func logStreamError(err error, slow, closing string) error {
	var connectErr *connect.Error
	switch {
	case err == nil, errors.As(err, &connectErr):
		return err
	case errors.Is(err, errSlowConsumer):
		return connect.NewError(connect.CodeResourceExhausted, errors.New(slow))
	case errors.Is(err, changelog.ErrClosed), errors.Is(err, errDraining):
		return connect.NewError(connect.CodeUnavailable, errors.New(closing))
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	default:
		return connect.NewError(connect.CodeInternal, errors.New("the change log cannot be read"))
	}
}

// localSource is this node's part of a watch: the position of its reader,
// shared with the sender so that progress messages can report changes the
// reader passed over without queueing anything for them.
type localSource struct {
	node    string
	covered atomic.Int64 // every change up to it was queued or did not match
	queued  atomic.Int64 // items queued and not yet taken by the sender
}

func newLocalSource(node string, after int64) *localSource {
	s := &localSource{node: node}
	s.covered.Store(after)
	return s
}

// readLocal reads this node's changes and queues those matching for the
// sender, until ctx ends or reading fails. It never blocks writers (it
// pulls from the log); when the client does not keep up and the queue
// stays full longer than the limit, it gives up with errSlowConsumer.
// Each item becomes one response, so items are cut at watchResponseBytes:
// that bounds both responses and what the queue holds.
func (h *handler) readLocal(ctx context.Context, r *changelog.Reader, match func(string) bool, src *localSource, out chan<- watchItem) error {
	queue := func(events []*cdcv1.ChangeEvent, through int64) error {
		// Counted before it is queued and covered after, so the sender
		// never reports a position past an item it has not sent (see
		// watchSender.progress).
		src.queued.Add(1)
		return offer(ctx, out, watchItem{node: src.node, events: events, through: through, local: src}, h.watch.slow)
	}
	// Internal records (keys moving between nodes) are not changes anyone
	// made: a watch never sees them.
	published := func(e changelog.Event) bool { return !e.Internal && match(e.Key) }
	return readMatching(ctx, r, published, func(events []*cdcv1.ChangeEvent, through int64) error {
		if len(events) > 0 {
			if err := queue(events, through); err != nil {
				return err
			}
		}
		src.covered.Store(through)
		return nil
	})
}

// readMatching reads r until ctx ends or reading fails, and hands emit the
// decoded changes that match, in revision order, with the revision
// through which the log has been read. A batch of matching changes is cut
// at watchResponseBytes (emitted with the revision of its last change);
// emit is called once for every batch read, with what matched of it, even
// nothing.
func readMatching(ctx context.Context, r *changelog.Reader, match func(changelog.Event) bool, emit func(events []*cdcv1.ChangeEvent, through int64) error) error {
	for {
		batch, err := r.Next(ctx, watchReadBatch)
		if err != nil {
			return err
		}
		var events []*cdcv1.ChangeEvent
		size := 0
		for _, e := range batch {
			if !match(e) {
				continue
			}
			if len(events) > 0 && size+len(e.Data) > watchResponseBytes {
				if err := emit(events, events[len(events)-1].GetRevision()); err != nil {
					return err
				}
				events, size = nil, 0
			}
			ev := new(cdcv1.ChangeEvent)
			if err := proto.Unmarshal(e.Data, ev); err != nil {
				return fmt.Errorf("decode change event %d: %w", e.Revision, err)
			}
			events = append(events, ev)
			size += len(e.Data)
		}
		if err := emit(events, batch[len(batch)-1].Revision); err != nil {
			return err
		}
	}
}

// offer puts v on ch, waiting at most limit while ch is full.
func offer[T any](ctx context.Context, ch chan<- T, v T, limit time.Duration) error {
	select {
	case ch <- v:
		return nil
	default:
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case ch <- v:
		return nil
	case <-t.C:
		return errSlowConsumer
	case <-ctx.Done():
		return ctx.Err()
	}
}

// watchItem is what a source hands the sender: changes of one node, and
// how far they take the stream on that node.
type watchItem struct {
	node    string
	events  []*cdcv1.ChangeEvent
	through int64        // every change of node up to it was read
	local   *localSource // set when the item comes from this node's reader
}

// watchSender writes a watch's responses: it merges what its sources
// queue, keeps the position of the stream on every node and puts it in
// each response's resume_token, and sends progress messages when the
// stream is idle. It runs on the handler's goroutine, the only one that
// sends on the stream.
type watchSender struct {
	cfg    watchConfig
	stream *connect.ServerStream[kvv1.WatchResponse]
	local  *localSource // nil when this node has no part in the watch
	pos    watchPositions
	// waiting holds the nodes whose starting point is not known yet: each
	// remote stream's first response reports it. Until all have, items are
	// held in pending, because a token must name every node.
	waiting map[string]bool
	pending []watchItem
}

func newWatchSender(cfg watchConfig, stream *connect.ServerStream[kvv1.WatchResponse], local *localSource, start watchPositions, waiting []string) *watchSender {
	s := &watchSender{cfg: cfg, stream: stream, local: local, pos: start, waiting: map[string]bool{}}
	for _, id := range waiting {
		s.waiting[id] = true
	}
	return s
}

// run sends until a source fails (every source runs until it fails or ctx
// ends) or ctx ends. When ctx has ended, its cause is the answer, whatever
// a source saw first.
func (s *watchSender) run(ctx context.Context, items <-chan watchItem, errc <-chan error) error {
	err := s.loop(ctx, items, errc)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

func (s *watchSender) loop(ctx context.Context, items <-chan watchItem, errc <-chan error) error {
	var startc <-chan time.Time
	if len(s.waiting) > 0 {
		t := time.NewTimer(peerCallTimeout)
		defer t.Stop()
		startc = t.C
	} else if err := s.start(); err != nil {
		return err
	}
	idle := time.NewTimer(s.cfg.progress)
	defer idle.Stop()
	for {
		select {
		case it := <-items:
			sent, err := s.deliver(it)
			if err != nil {
				return err
			}
			if sent {
				idle.Reset(s.cfg.progress)
			}
		case <-idle.C:
			if len(s.waiting) == 0 {
				if err := s.progress(); err != nil {
					return err
				}
			}
			idle.Reset(s.cfg.progress)
		case <-startc:
			if len(s.waiting) > 0 {
				ids := slices.Sorted(maps.Keys(s.waiting))
				return connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %s did not start its part of the watch within %s", ids[0], peerCallTimeout))
			}
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// start sends the first response: no events, the starting point's token.
func (s *watchSender) start() error {
	return s.stream.Send(&kvv1.WatchResponse{ResumeToken: encodeToken(s.pos)})
}

// deliver takes one item and reports whether anything was sent.
func (s *watchSender) deliver(it watchItem) (bool, error) {
	if it.local != nil {
		defer it.local.queued.Add(-1)
	}
	if s.waiting[it.node] {
		// A remote stream's first response: where that node starts.
		delete(s.waiting, it.node)
		s.pos[it.node] = it.through
		if len(it.events) > 0 {
			return false, connect.NewError(connect.CodeInternal, fmt.Errorf("node %s started its part of the watch with changes instead of its position", it.node))
		}
		if len(s.waiting) > 0 {
			return false, nil
		}
		if err := s.start(); err != nil {
			return false, err
		}
		for _, p := range s.pending {
			if _, err := s.send(p); err != nil {
				return false, err
			}
		}
		s.pending = nil
		return true, nil
	}
	if len(s.waiting) > 0 {
		s.pending = append(s.pending, it)
		return false, nil
	}
	return s.send(it)
}

// send sends the item's events, if it has any, with the token of the
// stream's position after them.
func (s *watchSender) send(it watchItem) (bool, error) {
	s.pos[it.node] = max(s.pos[it.node], it.through)
	if len(it.events) == 0 {
		// A remote progress message: it only moves the position, which
		// the next response reports.
		return false, nil
	}
	return true, s.stream.Send(&kvv1.WatchResponse{Events: it.events, ResumeToken: encodeToken(s.pos)})
}

// progress sends a response without events. Its token includes the
// changes this node's reader passed over, but only once everything it
// queued has been sent: the reader counts an item as queued before it
// moves covered past it, so with nothing queued, covered is safe.
func (s *watchSender) progress() error {
	if l := s.local; l != nil {
		if covered := l.covered.Load(); l.queued.Load() == 0 {
			s.pos[l.node] = max(s.pos[l.node], covered)
		}
	}
	return s.stream.Send(&kvv1.WatchResponse{ResumeToken: encodeToken(s.pos)})
}
