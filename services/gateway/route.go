package gateway

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/coord"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/ring"
)

// backend is where one call goes.
type backend struct {
	id      string
	url     string // the instance's base URL
	breaker string // the instance's circuit breaker: service/id
	// roundRobin is set when any live instance would do, so a retry may go
	// to another one; a shard-keyed call has exactly one right instance.
	roundRobin bool
}

// rings keeps one ring per service, rebuilt only when its members change.
// Flux-KV's own service is placed over the cluster's ring record (its
// members, live or not: one that is down keeps its keys, which then fail
// fast); any other service over its live instances.
type rings struct {
	mu    sync.Mutex
	rings map[string]serviceRing
}

// serviceRing is a service's ring and the snapshot it was last checked
// against: snapshots are immutable, so until the next one the ring needs no
// check, and a call does not pay for listing and sorting the members.
type serviceRing struct {
	ring *ring.Ring
	snap *discovery.Snapshot
}

func (r *rings) get(service string, snap *discovery.Snapshot) (*ring.Ring, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.rings[service]
	if ok && cur.snap == snap {
		return cur.ring, nil
	}
	ids := snap.RingMembers()
	if service != kvv1connect.KVServiceName {
		ids = sortedIDs(snap.Instances[service])
	}
	if !ok || !slices.Equal(cur.ring.Members(), ids) {
		next, err := ring.New(ids)
		if err != nil {
			return nil, err
		}
		cur.ring = next
	}
	cur.snap = snap
	if r.rings == nil {
		r.rings = map[string]serviceRing{}
	}
	r.rings[service] = cur
	return cur.ring, nil
}

// route picks the instance for a call to m with request msg (nil for
// client and bidi streams): the ring owner of the shard key when the
// request sets one, otherwise the next live instance round-robin whose
// breaker is not open and that is not in skip.
func (g *Gateway) route(m *method, msg *dynamicpb.Message, skip []string) (backend, error) {
	snap := g.watcher.Snapshot()
	live := snap.Instances[m.service]
	if msg != nil {
		if key, ok := m.shardKeyOf(msg); ok {
			r, err := g.rings.get(m.service, snap)
			if err != nil {
				return backend{}, err
			}
			owner := r.Owner(key)
			inst, ok := live[owner]
			if owner == "" || !ok {
				if owner == "" {
					return backend{}, connect.NewError(connect.CodeUnavailable, fmt.Errorf("no live instance of %s", m.service))
				}
				return backend{}, coord.NotExecuted(coord.ReasonOwnerNotLive, owner, fmt.Errorf("node %s, which owns this key, is not live", owner))
			}
			url, err := inst.DialURL(g.cfg.PeerTLS != nil)
			if err != nil {
				return backend{}, coord.NotExecuted(coord.ReasonOwnerNotLive, owner, err)
			}
			return backend{id: owner, url: url, breaker: m.service + "/" + owner}, nil
		}
	}
	ids := sortedIDs(live)
	if len(ids) == 0 {
		return backend{}, connect.NewError(connect.CodeUnavailable, fmt.Errorf("no live instance of %s", m.service))
	}
	counter := g.counter(m.service)
	start := counter.Add(1)
	for i := range len(ids) {
		id := ids[(start+uint64(i))%uint64(len(ids))]
		if slices.Contains(skip, id) || g.breakers.Open(m.service+"/"+id) {
			continue
		}
		url, err := live[id].DialURL(g.cfg.PeerTLS != nil)
		if err != nil {
			continue
		}
		return backend{id: id, url: url, breaker: m.service + "/" + id, roundRobin: true}, nil
	}
	return backend{}, connect.NewError(connect.CodeUnavailable, fmt.Errorf("no available instance of %s: every live one is failing (circuit open) or was tried", m.service))
}

func (g *Gateway) counter(service string) *atomic.Uint64 {
	if c, ok := g.counters.Load(service); ok {
		return c.(*atomic.Uint64)
	}
	c, _ := g.counters.LoadOrStore(service, new(atomic.Uint64))
	return c.(*atomic.Uint64)
}

func sortedIDs(live map[string]discovery.Instance) []string {
	ids := make([]string, 0, len(live))
	for id := range live {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
