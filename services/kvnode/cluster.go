package kvnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/buildinfo"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/ring"
)

// forwardedHeader marks requests this node sends to its peers.
const forwardedHeader = coord.ForwardedHeader

// Timeouts of calls between nodes. A peer that is registered but does not
// answer must cost its callers a bounded wait, not the client's whole
// deadline (or none at all).
const (
	peerDialTimeout = time.Second
	// peerPingInterval and peerPingTimeout detect a dead HTTP/2 connection
	// to a peer (a host that vanished without closing it).
	peerPingInterval = 2 * time.Second
	peerPingTimeout  = 2 * time.Second
	// peerCallTimeout bounds a forwarded call whose caller set no deadline.
	peerCallTimeout = 10 * time.Second
	// etcdTimeout bounds each etcd request the node makes while serving.
	etcdTimeout = 3 * time.Second
)

// cluster is a node's view of the cluster it joined through etcd: its
// registration, the members and live nodes, the ring over the members and
// clients for its peers.
type cluster struct {
	self    string
	client  *clientv3.Client
	watcher *discovery.Watcher
	reg     *discovery.Registration
	view    atomic.Pointer[view]
	// requireTLS refuses peers registered without TLS (PeerTLS is set).
	requireTLS bool
	http       *http.Client
	logger     *slog.Logger
	// clientInterceptors run on calls to peers (tracing).
	clientInterceptors []connect.Interceptor

	// marked is set once etcd records that the cluster holds data, after
	// which writes need no etcd round trip.
	marked atomic.Bool
	markMu sync.Mutex

	mu    sync.Mutex
	peers map[string]kvv1connect.KVServiceClient // by node id and address

	// ringChanged gets a token whenever the view's rings change.
	ringChanged chan struct{}

	closeOnce sync.Once
	stopc     chan struct{}
	donec     chan struct{}
}

// view is the ring, its epoch and the etcd revision it was built from.
type view struct {
	ring   *ring.Ring
	next   *ring.Ring // the ring a change in progress leads to; nil when none
	nextID int64      // the change in progress (discovery.Snapshot.NextRevision); 0 when none
	epoch  int64      // 0 while the cluster has no ring record (not migrated yet)
	rev    int64
}

// join records the node as a member, starts watching the cluster and
// registers the node as live. holdsData says the node's store is not
// empty (it recovered data), which etcd must record before the node
// serves. The caller must be ready to serve requests routed by the ring
// before join returns: registering makes the node live to everyone.
func join(ctx context.Context, cfg Config, apiAddr, adminAddr string, holdsData bool) (_ *cluster, err error) {
	client, err := discovery.Connect(context.Background(), cfg.Etcd, cfg.EtcdTLS)
	if err != nil {
		return nil, err
	}
	// Peers that serve TLS are dialed over it; the others in cleartext.
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	protocols.SetHTTP2(true)
	c := &cluster{
		self:    cfg.NodeID,
		client:  client,
		watcher: discovery.NewWatcher(client, cfg.Logger),
		http: &http.Client{Transport: &http.Transport{
			Protocols:       &protocols,
			TLSClientConfig: cfg.PeerTLS.Clone(), // its transport adds h2 to the ALPN list
			DialContext:     (&net.Dialer{Timeout: peerDialTimeout}).DialContext,
			HTTP2:           &http.HTTP2Config{SendPingTimeout: peerPingInterval, PingTimeout: peerPingTimeout},
		}},
		logger:             cfg.Logger,
		requireTLS:         cfg.PeerTLS != nil,
		clientInterceptors: append(slices.Clone(cfg.ClientInterceptors), auth.Bearer(cfg.PeerToken)),
		peers:              map[string]kvv1connect.KVServiceClient{},
		ringChanged:        make(chan struct{}, 1),
		stopc:              make(chan struct{}),
		donec:              make(chan struct{}),
	}
	var added, following bool
	defer func() {
		if err == nil {
			return
		}
		if following {
			close(c.stopc)
			<-c.donec
		}
		if added {
			// Undo the join, so a node that never served leaves no member
			// behind owning keys nobody holds.
			rctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
			if rerr := discovery.RemoveMember(rctx, client, c.self); rerr != nil {
				c.logger.Error("could not undo the join; remove the member by hand", slog.String("node_id", c.self), slog.Any("error", rerr))
			}
			cancel()
		}
		c.watcher.Close()
		client.Close()
	}()
	if err := c.watcher.Start(ctx); err != nil {
		return nil, err
	}
	// A cluster created before ring records existed gets one now, from the
	// members it has, before this node changes the members.
	migrated, err := discovery.MigrateRing(ctx, client)
	if err != nil {
		return nil, err
	}
	if migrated {
		cfg.Logger.Info("recorded the cluster's ring at epoch 1 from its members", slog.String("node_id", cfg.NodeID))
	}
	// A node that is joining a cluster that holds data (this start or an
	// earlier one) waits off the ring while the keys moving to it are
	// copied; the ring flips to include it once it holds them.
	joining := false
	if next, err := discovery.ReadNext(ctx, client); err != nil {
		return nil, err
	} else if next != nil && next.Change != nil && next.Change.Add == c.self {
		joining = true
		cfg.Logger.Info("resuming the join: copying the keys that move to this node", slog.String("node_id", cfg.NodeID), slog.Int64("epoch", next.Epoch))
	}
	if !joining {
		added, err = discovery.AddMember(ctx, client, cfg.NodeID, cfg.AcceptKeyMovement)
		switch {
		case errors.Is(err, discovery.ErrHoldsData) && cfg.Join:
			next, err := discovery.BeginAdd(ctx, client, cfg.NodeID)
			if err != nil {
				return nil, fmt.Errorf("join a cluster that holds data: %w", err)
			}
			joining = true
			cfg.Logger.Info("joining a cluster that holds data: copying the keys that move to this node", slog.String("node_id", cfg.NodeID), slog.Int64("epoch", next.Epoch))
		case errors.Is(err, discovery.ErrHoldsData):
			return nil, fmt.Errorf("cannot add node %s to a cluster that holds data without moving keys to it: "+
				"start it with --join to copy its keys while the cluster serves", c.self)
		case err != nil:
			return nil, err
		case added:
			cfg.Logger.Info("joined the cluster as a new member", slog.String("node_id", cfg.NodeID))
		}
	}
	// The ring records just written (by this node or another) may not be
	// in the snapshot yet: wait for them, so the view this node starts with
	// includes itself (or the change that adds it), and markData below
	// compares against a view no older than what this node wrote.
	resp, err := client.Get(ctx, discovery.Prefix+"ring/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("read the cluster's ring: %w", err)
	}
	ringRev := resp.Header.Revision
	onRing := func(snap *discovery.Snapshot) bool {
		if joining {
			return snap.Next != nil && snap.Next.Change != nil && snap.Next.Change.Add == c.self
		}
		_, ok := snap.Members[c.self]
		return ok
	}
	snap, changed := c.watcher.Current()
	for !onRing(snap) || snap.Revision < ringRev {
		if joining && slices.Contains(snap.RingMembers(), c.self) && snap.Revision >= ringRev {
			break // the join finished meanwhile
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting to see this node's membership in etcd: %w", ctx.Err())
		case <-changed:
		}
		snap, changed = c.watcher.Current()
	}
	if !joining && !slices.Contains(snap.RingMembers(), c.self) {
		return nil, fmt.Errorf("node %s is a member but not on the cluster's ring (epoch %d): it was added by hand or by an older version; "+
			"remove it from /flux/members/ and start it again", c.self, snap.Epoch())
	}
	if err := c.rebuild(snap); err != nil {
		return nil, err
	}
	following = true
	go c.follow(changed)
	if holdsData {
		if err := c.markData(ctx, ""); err != nil {
			return nil, err
		}
	}
	inst := discovery.Instance{
		ID: cfg.NodeID, Address: apiAddr, AdminAddress: adminAddr,
		StartedAt: time.Now().UTC().Truncate(time.Second), Version: buildinfo.String(),
		TLS: cfg.TLS != nil,
	}
	c.reg, err = discovery.Register(ctx, client, kvv1connect.KVServiceName, inst,
		discovery.WithTTL(cfg.LeaseTTL), discovery.WithLogger(cfg.Logger))
	if err != nil {
		return nil, err
	}
	return c, nil
}

// markData makes sure etcd records that the cluster holds data before this
// node applies a write to key ("" for none), so no new member joins and
// takes over keys whose values stay here. It costs one etcd transaction per
// node lifetime: once recorded, joins are refused, so the ring no longer
// changes under writes. The transaction succeeds only if no member joined
// after the view the node checks key's owner against; if key is not this
// node's under that view, the write is refused as not executed.
func (c *cluster) markData(ctx context.Context, key string) error {
	if c.marked.Load() {
		return nil
	}
	c.markMu.Lock()
	defer c.markMu.Unlock()
	if c.marked.Load() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	v := c.view.Load()
	err := discovery.MarkData(ctx, c.client, c.self, v.rev)
	switch {
	case errors.Is(err, discovery.ErrMembersChanged):
		return coord.NotExecuted(coord.ReasonNotReady, c.self, fmt.Errorf("node %s: the cluster's members are changing; retry", c.self))
	case err != nil:
		return coord.NotExecuted(coord.ReasonNotReady, c.self, fmt.Errorf("node %s cannot accept the cluster's first write: %w", c.self, err))
	}
	c.marked.Store(true)
	// The owner was chosen before, perhaps with an older view.
	if key != "" && v.ring.Owner(key) != c.self {
		owner := v.ring.Owner(key)
		return coord.NotExecuted(coord.ReasonNotOwner, c.self, fmt.Errorf("node %s: key belongs to node %s now that the members changed; retry", c.self, owner))
	}
	return nil
}

// follow rebuilds the ring whenever the cluster's ring record (or, before
// it has one, its members) changes.
func (c *cluster) follow(changed <-chan struct{}) {
	defer close(c.donec)
	for {
		select {
		case <-c.stopc:
			return
		case <-changed:
		}
		var snap *discovery.Snapshot
		snap, changed = c.watcher.Current()
		if err := c.rebuild(snap); err != nil {
			c.logger.Error("rebuild ring", slog.Any("error", err))
		}
	}
}

func (c *cluster) rebuild(snap *discovery.Snapshot) error {
	ids, epoch := snap.RingMembers(), snap.Epoch()
	old := c.view.Load()
	r := (*ring.Ring)(nil)
	if old != nil && slices.Equal(old.ring.Members(), ids) {
		r = old.ring
	} else {
		var err error
		if r, err = ring.New(ids); err != nil {
			return err
		}
	}
	var next *ring.Ring
	if snap.Current != nil && snap.Next != nil {
		if old != nil && old.next != nil && slices.Equal(old.next.Members(), snap.Next.Members) {
			next = old.next
		} else {
			var err error
			if next, err = ring.New(snap.Next.Members); err != nil {
				return err
			}
		}
	}
	var nextID int64
	if next != nil {
		nextID = snap.NextRevision
	}
	if old != nil && r == old.ring && next == old.next && nextID == old.nextID {
		// Same rings, newer revision: a member removed and added again
		// under its id must not leave markData comparing against the
		// revision before that.
		if snap.Revision > old.rev {
			c.view.Store(&view{ring: r, next: next, nextID: nextID, epoch: epoch, rev: snap.Revision})
		}
		return nil
	}
	c.view.Store(&view{ring: r, next: next, nextID: nextID, epoch: epoch, rev: snap.Revision})
	if next != nil {
		c.logger.Info("ring updated", slog.Int64("epoch", epoch), slog.Any("members", ids),
			slog.Int64("next_epoch", snap.Next.Epoch), slog.Any("next_members", snap.Next.Members))
	} else {
		c.logger.Info("ring updated", slog.Int64("epoch", epoch), slog.Any("members", ids))
	}
	select {
	case c.ringChanged <- struct{}{}:
	default:
	}
	return nil
}

// ring returns the current ring.
func (c *cluster) ring() *ring.Ring { return c.view.Load().ring }

// owner returns the member owning key and, unless it is this node, a client
// for it. A member that is not live fails fast with Unavailable naming it.
func (c *cluster) owner(key string) (string, kvv1connect.KVServiceClient, error) {
	id := c.ring().Owner(key)
	if id == c.self {
		return id, nil, nil
	}
	client, err := c.peer(id)
	return id, client, err
}

// peer returns a client for a live member.
func (c *cluster) peer(id string) (kvv1connect.KVServiceClient, error) {
	inst, ok := c.watcher.Snapshot().Instances[kvv1connect.KVServiceName][id]
	if !ok {
		return nil, coord.NotExecuted(coord.ReasonOwnerNotLive, id, fmt.Errorf("node %s, which owns this key, is not live", id))
	}
	url, err := inst.DialURL(c.requireTLS)
	if err != nil {
		return nil, coord.NotExecuted(coord.ReasonOwnerNotLive, id, err)
	}
	key := id + "@" + url
	c.mu.Lock()
	defer c.mu.Unlock()
	client, ok := c.peers[key]
	if !ok {
		client = kvv1connect.NewKVServiceClient(c.http, url,
			connect.WithGRPC(), connect.WithInterceptors(append(slices.Clone(c.clientInterceptors), peerInterceptor(id, inst.Address))...))
		c.peers[key] = client
	}
	return client, nil
}

// peerInterceptor bounds calls to a peer that carry no deadline, and turns
// a failure to connect into an error that names the node and says the
// request was not executed.
func peerInterceptor(id, addr string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if _, ok := ctx.Deadline(); !ok {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, peerCallTimeout)
				defer cancel()
			}
			resp, err := next(ctx, req)
			var opErr *net.OpError
			if err != nil && errors.As(err, &opErr) && opErr.Op == "dial" {
				return nil, coord.NotExecuted(coord.ReasonOwnerUnreachable, id,
					fmt.Errorf("node %s at %s cannot be reached: %v", id, addr, opErr.Err))
			}
			return resp, err
		}
	}
}

// deregister revokes the node's registration, so peers, gateways and SDKs
// stop sending it requests, while the node keeps routing the requests it
// still gets. If etcd does not answer before ctx ends, the registration
// expires after its TTL instead.
func (c *cluster) deregister(ctx context.Context) error {
	return c.reg.Close(ctx)
}

// close stops watching the cluster and releases the connections. The last
// view stays, so calls still running route as before (a write that needs
// etcd is refused as not executed). It is idempotent.
func (c *cluster) close() error {
	var err error
	c.closeOnce.Do(func() { err = c.closeNow() })
	return err
}

func (c *cluster) closeNow() error {
	close(c.stopc)
	<-c.donec
	c.watcher.Close()
	c.http.CloseIdleConnections()
	return c.client.Close()
}
