package kvnode

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/buildinfo"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/ring"
)

// forwardedHeader marks requests this node sends to its peers.
const forwardedHeader = coord.ForwardedHeader

// cluster is a node's view of the cluster it joined through etcd: its
// registration, the members and live nodes, the ring over the members and
// clients for its peers.
type cluster struct {
	self    string
	client  *clientv3.Client
	watcher *discovery.Watcher
	reg     *discovery.Registration
	ring    atomic.Pointer[ring.Ring]
	http    *http.Client
	logger  *slog.Logger

	mu    sync.Mutex
	peers map[string]kvv1connect.KVServiceClient // by address

	stopc chan struct{}
	donec chan struct{}
}

// join records the node as a member, starts watching the cluster and
// registers the node as live.
func join(ctx context.Context, cfg Config, apiAddr, adminAddr string) (_ *cluster, err error) {
	client, err := clientv3.New(clientv3.Config{Endpoints: cfg.Etcd, DialTimeout: 5 * time.Second, Logger: nil})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd: %w", err)
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	c := &cluster{
		self:    cfg.NodeID,
		client:  client,
		watcher: discovery.NewWatcher(client, cfg.Logger),
		http:    &http.Client{Transport: &http.Transport{Protocols: &protocols}},
		logger:  cfg.Logger,
		peers:   map[string]kvv1connect.KVServiceClient{},
		stopc:   make(chan struct{}),
		donec:   make(chan struct{}),
	}
	defer func() {
		if err != nil {
			c.watcher.Close()
			client.Close()
		}
	}()
	if err := c.watcher.Start(ctx); err != nil {
		return nil, err
	}
	if err := c.checkJoin(ctx, cfg.AcceptKeyMovement); err != nil {
		return nil, err
	}
	added, err := discovery.AddMember(ctx, client, cfg.NodeID)
	if err != nil {
		return nil, err
	}
	if added {
		cfg.Logger.Info("joined the cluster as a new member", slog.String("node_id", cfg.NodeID))
	}
	snap, changed := c.watcher.Current()
	if err := c.rebuild(snap); err != nil {
		return nil, err
	}
	go c.follow(changed)
	inst := discovery.Instance{
		ID: cfg.NodeID, Address: apiAddr, AdminAddress: adminAddr,
		StartedAt: time.Now().UTC().Truncate(time.Second), Version: buildinfo.String(),
	}
	c.reg, err = discovery.Register(ctx, client, kvv1connect.KVServiceName, inst,
		discovery.WithTTL(cfg.LeaseTTL), discovery.WithLogger(cfg.Logger))
	if err != nil {
		close(c.stopc)
		<-c.donec
		return nil, err
	}
	return c, nil
}

// checkJoin refuses to add a new member to a cluster that holds data:
// the ring would give the new node keys whose data stays on their old
// owners, and reads would miss them. Until live rebalancing exists, only an
// operator who accepts that may do it. Rejoining as an existing member, and
// forming a cluster while it is empty, are always allowed.
func (c *cluster) checkJoin(ctx context.Context, accept bool) error {
	snap := c.watcher.Snapshot()
	if _, ok := snap.Members[c.self]; ok || len(snap.Members) == 0 || accept {
		return nil
	}
	for _, id := range snap.MemberIDs() {
		inst, ok := snap.Instances[kvv1connect.KVServiceName][id]
		if !ok {
			return fmt.Errorf("cannot add node %s: member %s is down, so whether the cluster holds data cannot be checked (pass --accept-key-movement to join anyway)", c.self, id)
		}
		peer := kvv1connect.NewKVServiceClient(c.http, "http://"+inst.Address, connect.WithGRPC())
		resp, err := peer.Scan(ctx, forward(c.self, &kvv1.ScanRequest{Limit: 1, KeysOnly: true}))
		if err != nil {
			return fmt.Errorf("cannot add node %s: checking member %s for data: %w", c.self, id, err)
		}
		if len(resp.Msg.GetItems()) > 0 {
			return fmt.Errorf("cannot add node %s to a cluster that holds data: keys would move to it without their values, "+
				"and live rebalancing does not exist yet; pass --accept-key-movement to join anyway", c.self)
		}
	}
	return nil
}

// follow rebuilds the ring whenever the members change.
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
	ids := snap.MemberIDs()
	if r := c.ring.Load(); r != nil && slices.Equal(r.Members(), ids) {
		return nil
	}
	r, err := ring.New(ids)
	if err != nil {
		return err
	}
	c.ring.Store(r)
	c.logger.Info("ring updated", slog.Any("members", ids))
	return nil
}

// owner returns the member owning key and, unless it is this node, a client
// for it. A member that is not live fails fast with Unavailable naming it.
func (c *cluster) owner(key string) (string, kvv1connect.KVServiceClient, error) {
	id := c.ring.Load().Owner(key)
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
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("node %s, which owns this key, is not live", id))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	client, ok := c.peers[inst.Address]
	if !ok {
		client = kvv1connect.NewKVServiceClient(c.http, "http://"+inst.Address, connect.WithGRPC())
		c.peers[inst.Address] = client
	}
	return client, nil
}

// leave revokes the registration first, so peers stop sending requests
// here, then stops watching.
func (c *cluster) leave() error {
	err := c.reg.Close()
	close(c.stopc)
	<-c.donec
	c.watcher.Close()
	c.http.CloseIdleConnections()
	if cerr := c.client.Close(); err == nil {
		err = cerr
	}
	return err
}
