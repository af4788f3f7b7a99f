package kvnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/coord"
)

// proxyWatch serves a key watch from the key's owner: its responses, tokens
// included, pass through unchanged. A client that reads too slowly holds
// up this stream, then the owner's, which cuts it off.
func (h *handler) proxyWatch(ctx context.Context, client kvv1connect.KVServiceClient, msg *kvv1.WatchRequest, stream *connect.ServerStream[kvv1.WatchResponse]) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	owner := h.router.ownerOf(msg.GetKey())
	remote, err := client.Watch(ctx, forward(h.router.self, msg))
	if err != nil {
		return fromNode(owner, err)
	}
	defer remote.Close()
	for remote.Receive() {
		if err := stream.Send(remote.Msg()); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return watchError(context.Cause(ctx))
	}
	return fromNode(owner, remote.Err())
}

// coordinateWatch serves a prefix watch of the whole cluster: this node's
// own part from its log, and one forwarded watch per other member, merged
// into one stream whose tokens hold every member's position. Every member
// is needed: a watch silently missing a node's changes would be wrong, so
// a member that is not live fails it, and so does any part that fails.
func (h *handler) coordinateWatch(ctx context.Context, c *cluster, msg *kvv1.WatchRequest, from watchPositions, stream *connect.ServerStream[kvv1.WatchResponse]) error {
	resuming := msg.GetResumeToken() != ""
	members := c.ring().Members()
	type part struct {
		id     string
		client kvv1connect.KVServiceClient
	}
	var remotes []part
	var remoteIDs []string
	for _, id := range members {
		if id == h.router.self {
			continue
		}
		client, err := c.peer(id)
		if err != nil {
			return coord.NotExecuted(coord.ReasonOwnerNotLive, id, fmt.Errorf("a watch of the cluster needs every node, and node %s is not live", id))
		}
		remotes = append(remotes, part{id, client})
		remoteIDs = append(remoteIDs, id)
	}

	start := watchPositions{}
	var local *localSource
	var r *changelog.Reader
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Stop the parts, wait for them, then release the reader they read.
	defer func() {
		cancel()
		wg.Wait()
		if r != nil {
			r.Close()
		}
	}()
	items := make(chan watchItem, h.watch.buffer)
	errc := make(chan error, len(members)+1)
	if slices.Contains(members, h.router.self) {
		after := h.events.Durable()
		if resuming {
			after = from.startAfter(h.router.self)
		}
		reader, err := h.openReader(after)
		if err != nil {
			return err
		}
		r = reader
		local = newLocalSource(h.router.self, after)
		start[h.router.self] = after
		match := matcher(msg)
		wg.Go(func() { errc <- h.readLocal(ctx, reader, match, local, items) })
	}
	for _, p := range remotes {
		req := &kvv1.WatchRequest{Target: msg.GetTarget()}
		if resuming {
			req.StartRevision = from.startAfter(p.id) + 1
		}
		wg.Go(func() { errc <- fromNode(p.id, h.readRemote(ctx, p.id, p.client, req, items)) })
	}
	wg.Go(func() { errc <- untilMembersChange(ctx, c, members) })
	s := newWatchSender(h.watch, stream, local, start, remoteIDs)
	return watchError(s.run(ctx, items, errc))
}

// readRemote queues a member's part of a watch for the sender, until ctx
// ends or the member's stream fails. The member's first response (its
// starting point) arrives as an item without events, like its progress
// messages.
func (h *handler) readRemote(ctx context.Context, id string, client kvv1connect.KVServiceClient, req *kvv1.WatchRequest, out chan<- watchItem) error {
	remote, err := client.Watch(ctx, forward(h.router.self, req))
	if err != nil {
		return err
	}
	defer remote.Close()
	for remote.Receive() {
		resp := remote.Msg()
		pos, err := decodeToken(resp.GetResumeToken())
		through, ok := pos[id]
		if err != nil || !ok {
			return connect.NewError(connect.CodeInternal, errors.New("its watch stream carries no position for it"))
		}
		if err := offer(ctx, out, watchItem{node: id, events: resp.GetEvents(), through: through}, h.watch.slow); err != nil {
			return err
		}
	}
	if err := remote.Err(); err != nil {
		return err
	}
	return connect.NewError(connect.CodeUnavailable, io.ErrUnexpectedEOF)
}

// fromNode names the node in an error that one of its watch streams ended
// with, keeping the code and the details (a WatchCompacted detail names the
// node already, but the message is what people read).
func fromNode(id string, err error) error {
	var connectErr *connect.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errSlowConsumer), errors.Is(err, context.Canceled) && !errors.As(err, &connectErr):
		return err
	case !errors.As(err, &connectErr):
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("watch on node %s: %w", id, err))
	}
	named := connect.NewError(connectErr.Code(), fmt.Errorf("watch on node %s: %s", id, connectErr.Message()))
	for _, d := range connectErr.Details() {
		named.AddDetail(d)
	}
	return named
}

// membersCheckInterval is how often a watch of the whole cluster checks
// that the ring's members are still those it watches.
const membersCheckInterval = 250 * time.Millisecond

// untilMembersChange returns, once the ring's members differ from members,
// the error that ends a watch of the whole cluster: after a node joined or
// left, keys that moved have their changes on nodes the watch does not
// read. The client resumes with its last token, and the new watch covers
// the new members (a member the token does not name from its first change;
// the copies it received are not changes). It returns nil when ctx ends.
func untilMembersChange(ctx context.Context, c *cluster, members []string) error {
	t := time.NewTicker(membersCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if v := c.view.Load(); !slices.Equal(v.ring.Members(), members) {
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf(
				"the cluster's members changed (ring epoch %d): resume the watch with the last resume_token to follow every member", v.epoch))
		}
	}
}
