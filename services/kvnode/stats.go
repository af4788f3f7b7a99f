package kvnode

import (
	"context"

	"connectrpc.com/connect"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
)

// nodeService serves flux.cluster.v1.NodeService: what this node holds. The
// gateway's ClusterService.Status asks every live node for it.
type nodeService struct{ n *Node }

func newNodeService(n *Node) clusterv1connect.NodeServiceHandler { return nodeService{n} }

func (s nodeService) Stats(context.Context, *connect.Request[clusterv1.StatsRequest]) (*connect.Response[clusterv1.StatsResponse], error) {
	return connect.NewResponse(&clusterv1.StatsResponse{Stats: s.n.Stats()}), nil
}

// Stats returns what the node holds now: keys, revisions, the size of its
// append-only file, its ring's epoch and the keys moving to it.
func (n *Node) Stats() *clusterv1.NodeStats {
	stats := &clusterv1.NodeStats{
		NodeId:         n.cfg.NodeID,
		KeyCount:       int64(n.store.Len()),
		Revision:       n.store.Revision(),
		OldestRevision: n.events.Oldest(),
		AppendOnly:     n.log != nil,
	}
	if n.log != nil {
		stats.LogBytes = n.log.Size()
	}
	if c := n.router.cluster.Load(); c != nil {
		stats.Epoch = c.view.Load().epoch
	}
	stats.Handoffs = n.mover.handoffs()
	return stats
}
