package gateway

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
)

// statsTimeout bounds the NodeService.Stats call that Status makes to each
// live node: a node that is slow to answer costs the caller this much, and
// shows an error in place of its statistics.
const statsTimeout = time.Second

// notProxied are the services the gateway never proxies, even when
// instances of them appear in etcd: it answers ClusterService itself, and
// NodeService describes the one node that answers it, so a call balanced
// round-robin would describe whichever node it happened to reach.
// ClusterService.Status asks every node for it instead.
var notProxied = map[string]bool{
	clusterv1connect.ClusterServiceName: true,
	clusterv1connect.NodeServiceName:    true,
}

// clusterService serves flux.cluster.v1.ClusterService from the gateway's
// view of etcd and its own circuit breakers.
type clusterService struct{ g *Gateway }

func newClusterService(g *Gateway) clusterv1connect.ClusterServiceHandler {
	return clusterService{g}
}

func (s clusterService) Status(ctx context.Context, _ *connect.Request[clusterv1.StatusRequest]) (*connect.Response[clusterv1.StatusResponse], error) {
	g := s.g
	snap := g.watcher.Snapshot()
	if snap == nil {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the gateway has not read the cluster's state from etcd yet"))
	}
	states := g.breakers.States()
	resp := &clusterv1.StatusResponse{GatewayId: g.cfg.ID, HoldsData: snap.HoldsData}
	live := snap.Instances[kvv1connect.KVServiceName]
	var wg sync.WaitGroup
	for _, id := range snap.MemberIDs() {
		m := &clusterv1.Member{Id: id, JoinedAt: timestamp(snap.Members[id].JoinedAt)}
		resp.Members = append(resp.Members, m)
		inst, ok := live[id]
		if !ok {
			continue
		}
		m.Live, m.Address, m.AdminAddress, m.Version = true, inst.Address, inst.AdminAddress, inst.Version
		m.StartedAt = timestamp(inst.StartedAt)
		state, ok := states[kvv1connect.KVServiceName+"/"+id]
		if !ok {
			state = rpcpolicy.StateClosed
		}
		m.Circuit = circuitState(state)
		wg.Go(func() {
			stats, err := g.nodeStats(ctx, inst.Address)
			if err != nil {
				m.StatsError = err.Error()
				return
			}
			m.Stats = stats
		})
	}
	for _, id := range slices.Sorted(maps.Keys(snap.Gateways)) {
		inst := snap.Gateways[id]
		resp.Gateways = append(resp.Gateways, &clusterv1.Gateway{
			Id: id, Address: inst.Address, AdminAddress: inst.AdminAddress, Version: inst.Version,
			StartedAt: timestamp(inst.StartedAt),
		})
	}
	for _, name := range slices.Sorted(maps.Keys(states)) {
		service, instance, _ := strings.Cut(name, "/")
		resp.Circuits = append(resp.Circuits, &clusterv1.Circuit{Service: service, Instance: instance, State: circuitState(states[name])})
	}
	wg.Wait()
	return connect.NewResponse(resp), nil
}

// nodeStats asks the node at addr for its statistics, within statsTimeout.
// The call bypasses the node's circuit breaker: it observes the node, and
// must neither be refused by an open circuit nor count towards opening one.
func (g *Gateway) nodeStats(ctx context.Context, addr string) (*clusterv1.NodeStats, error) {
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	client := clusterv1connect.NewNodeServiceClient(g.backendHTTP, "http://"+addr, append([]connect.ClientOption{connect.WithGRPC()}, g.clientOptions...)...)
	resp, err := client.Stats(ctx, connect.NewRequest(&clusterv1.StatsRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg.GetStats(), nil
}

func circuitState(state string) clusterv1.CircuitState {
	switch state {
	case rpcpolicy.StateClosed:
		return clusterv1.CircuitState_CIRCUIT_STATE_CLOSED
	case rpcpolicy.StateHalfOpen:
		return clusterv1.CircuitState_CIRCUIT_STATE_HALF_OPEN
	case rpcpolicy.StateOpen:
		return clusterv1.CircuitState_CIRCUIT_STATE_OPEN
	}
	return clusterv1.CircuitState_CIRCUIT_STATE_UNSPECIFIED
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
