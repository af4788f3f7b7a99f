package kvnode

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/discovery"
)

// freezeCheckInterval is how often a source checks whether a freeze can
// end: the ring flipped, or the target's lease is gone.
const freezeCheckInterval = 250 * time.Millisecond

// freeze is a source's promise to one target: no write to the keys moving
// to it until the ring flips to epoch, or the target's lease is gone.
type freeze struct {
	target string
	epoch  int64
	lease  clientv3.LeaseID
	moving func(string) bool
	since  time.Time
	stopc  chan struct{} // closed when a newer freeze for the target replaces this one
}

// freezes are a source's freezes, by target. Writers hold mu for reading
// from the moment they check a key until the store has applied the write,
// so taking it for writing waits for every write already admitted.
type freezes struct {
	mu     sync.RWMutex
	active map[string]*freeze
	// n is len(active), kept under mu for writing: readers of keys skip
	// the lock while no key is frozen, which is almost always.
	n atomic.Int32
}

// movingLocked returns the refusal of key if a freeze holds it; mu must be
// held.
func (fz *freezes) movingLocked(self, key string) error {
	for _, f := range fz.active {
		if f.moving(key) {
			return coord.NotExecuted(coord.ReasonMoving, self, fmt.Errorf(
				"node %s: key is moving to node %s (ring epoch %d); retry shortly", self, f.target, f.epoch))
		}
	}
	return nil
}

// admit lets a write to key into the store, or says why not; release must
// be called once the store has applied it (or refused it). A key frozen for
// a move is refused with MOVING; a key this node no longer owns (the ring
// flipped after the request was routed here) with NOT_OWNER.
func (r *router) admit(key string) (release func(), err error) {
	r.freezes.mu.RLock()
	if err := r.freezes.movingLocked(r.self, key); err != nil {
		r.freezes.mu.RUnlock()
		return nil, err
	}
	if c := r.cluster.Load(); c != nil {
		if v := c.view.Load(); v.ring.Owner(key) != r.self {
			r.freezes.mu.RUnlock()
			return nil, notOwner(r.self, v.ring.Owner(key), v.epoch)
		}
	}
	return r.freezes.mu.RUnlock, nil
}

// readable says whether a read of key may be served here: not while it is
// frozen for a move, because the ring may flip (and the key's new owner take
// writes) before this node sees it, and the value here would then be stale.
// The freeze ends once this node routes by the new ring.
func (r *router) readable(key string) error {
	// A read that starts before a freeze takes hold sees the value as it
	// was, which is current: only reads after it need the lock.
	if r.freezes.n.Load() == 0 {
		return nil
	}
	r.freezes.mu.RLock()
	defer r.freezes.mu.RUnlock()
	return r.freezes.movingLocked(r.self, key)
}

// notOwner is the refusal of a request for a key that owner has, by the
// ring of epoch: the client refreshes its ring and retries.
func notOwner(self, owner string, epoch int64) *connect.Error {
	cerr := connect.NewError(connect.CodeUnavailable, fmt.Errorf(
		"node %s: key belongs to node %s by the ring of epoch %d; refresh the ring and retry", self, owner, epoch))
	if d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{
		Reason: coord.ReasonNotOwner, Domain: coord.ErrorDomain,
		Metadata: map[string]string{"node_id": self, "owner": owner, "epoch": strconv.FormatInt(epoch, 10)},
	}); err == nil {
		cerr.AddDetail(d)
	}
	return cerr
}

// Freeze makes this node refuse writes to the keys moving to the request's
// target until the ring flips or the target's lease is gone, and answers
// the revision after which no write to them comes.
func (s *handoffService) Freeze(ctx context.Context, req *connect.Request[clusterv1.FreezeRequest]) (*connect.Response[clusterv1.FreezeResponse], error) {
	msg := req.Msg
	moving, err := s.moving(&clusterv1.CopyRequest{
		FromMembers: msg.GetFromMembers(), ToMembers: msg.GetToMembers(), Target: msg.GetTarget(), VirtualNodes: msg.GetVirtualNodes(),
	})
	if err != nil {
		return nil, err
	}
	c := s.router.cluster.Load()
	if c == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %s is not clustered", s.self))
	}
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	// The change must be the one in progress, read from etcd itself: a
	// target acting on a stale view must not freeze keys for a change that
	// is over.
	cur, next, err := discovery.ReadRings(ctx, c.client)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	if cur == nil || next == nil || next.Epoch != msg.GetEpoch() ||
		!slices.Equal(cur.Members, sortedCopy(msg.GetFromMembers())) || !slices.Equal(next.Members, sortedCopy(msg.GetToMembers())) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"the change to epoch %d with those members is not the cluster's change in progress", msg.GetEpoch()))
	}
	lease := clientv3.LeaseID(msg.GetLeaseId())
	ttl, err := c.client.TimeToLive(ctx, lease)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("check lease %x: %w", msg.GetLeaseId(), err))
	}
	if ttl.TTL <= 0 {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("lease %x is not alive", msg.GetLeaseId()))
	}
	f := &freeze{target: msg.GetTarget(), epoch: msg.GetEpoch(), lease: lease, moving: moving, since: time.Now(), stopc: make(chan struct{})}
	fz := &s.router.freezes
	fz.mu.Lock()
	if old := fz.active[f.target]; old != nil {
		close(old.stopc)
	}
	if fz.active == nil {
		fz.active = map[string]*freeze{}
	}
	fz.active[f.target] = f
	fz.n.Store(int32(len(fz.active)))
	// Every write admitted before is in the store now, and none to a moving
	// key comes after.
	rev := s.store.Revision()
	fz.mu.Unlock()
	s.metrics.frozen.Inc()
	go s.holdFreeze(c, f)
	s.router.logger().Info("froze keys moving to another node",
		slog.String("target", f.target), slog.Int64("epoch", f.epoch), slog.Int64("revision", rev))
	return connect.NewResponse(&clusterv1.FreezeResponse{Revision: rev}), nil
}

// holdFreeze ends f once it can: when this node routes by the ring of f's
// epoch (the keys are the target's, and admit refuses them as not owned),
// or when the change is abandoned: the target's lease is gone (or the
// change aborted) while the ring has not flipped, as read from etcd.
func (s *handoffService) holdFreeze(c *cluster, f *freeze) {
	defer s.metrics.frozen.Dec()
	t := time.NewTicker(freezeCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-f.stopc:
			return
		case <-c.stopc:
			return // the node is leaving: writes stop anyway
		case <-t.C:
		}
		if c.view.Load().epoch >= f.epoch {
			s.unfreeze(f, "the ring flipped")
			return
		}
		if abandoned, err := s.abandoned(c, f); err != nil {
			s.router.logger().Warn("cannot tell whether a freeze can end; keeping it", slog.String("target", f.target), slog.Any("error", err))
		} else if abandoned {
			s.unfreeze(f, "the change was abandoned")
			return
		}
	}
}

// abandoned reports whether the change f is for can no longer flip: it is
// no longer in progress, or its target's lease is gone, while the ring in
// etcd is still older than f's epoch. (A flip needs the target's ready key,
// which goes with its lease, so once the lease is gone no flip can follow.)
func (s *handoffService) abandoned(c *cluster, f *freeze) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
	defer cancel()
	snap := c.watcher.Snapshot()
	gone := snap.Next == nil || snap.Next.Epoch != f.epoch
	if !gone {
		ttl, err := c.client.TimeToLive(ctx, f.lease)
		if err != nil {
			return false, err
		}
		gone = ttl.TTL <= 0
	}
	if !gone {
		return false, nil
	}
	cur, err := discovery.ReadCurrent(ctx, c.client)
	if err != nil {
		return false, err
	}
	return cur == nil || cur.Epoch < f.epoch, nil
}

func (s *handoffService) unfreeze(f *freeze, why string) {
	fz := &s.router.freezes
	fz.mu.Lock()
	if fz.active[f.target] == f {
		delete(fz.active, f.target)
		fz.n.Store(int32(len(fz.active)))
	}
	fz.mu.Unlock()
	s.router.logger().Info("freeze ended", slog.String("target", f.target), slog.Int64("epoch", f.epoch), slog.String("why", why),
		slog.Duration("held", time.Since(f.since)))
}

func sortedCopy(ids []string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return out
}
