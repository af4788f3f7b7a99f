package gateway

import (
	"context"
	"errors"
	"log/slog"
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
	"github.com/fluxkv/fluxkv/platform/discovery"
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
// ClusterService.Status asks every node for it instead. HandoffService is
// internal to the nodes, which call it on each other while keys move: a
// copy from whichever node a call reached would be wrong, and clients have
// no business reading it.
var notProxied = map[string]bool{
	clusterv1connect.ClusterServiceName: true,
	clusterv1connect.NodeServiceName:    true,
	clusterv1connect.HandoffServiceName: true,
}

// clusterService serves flux.cluster.v1.ClusterService from the gateway's
// view of etcd and its own circuit breakers.
type clusterService struct {
	g *Gateway
	// failing holds, by node id, how a node's Stats last failed (its
	// statsError), so that a node that keeps failing alike is logged once,
	// not on every Status (the console asks every few seconds).
	failing sync.Map
}

func newClusterService(g *Gateway) clusterv1connect.ClusterServiceHandler {
	return &clusterService{g: g}
}

func (s *clusterService) Status(ctx context.Context, _ *connect.Request[clusterv1.StatusRequest]) (*connect.Response[clusterv1.StatusResponse], error) {
	g := s.g
	snap := g.watcher.Snapshot()
	if snap == nil {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the gateway has not read the cluster's state from etcd yet"))
	}
	states := g.breakers.States()
	resp := &clusterv1.StatusResponse{GatewayId: g.cfg.ID, HoldsData: snap.HoldsData, Epoch: snap.Epoch(), RingMembers: snap.RingMembers()}
	ids := snap.StatusMembers()
	if snap.Next != nil {
		resp.Change = ringChange(snap.Next)
	}
	live := snap.Instances[kvv1connect.KVServiceName]
	var wg sync.WaitGroup
	for _, id := range ids {
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
			url, err := inst.DialURL(g.cfg.PeerTLS != nil)
			if err != nil {
				s.noteStats(id, inst.Address, err)
				m.StatsError = statsError(err)
				return
			}
			stats, err := g.nodeStats(ctx, url)
			if ctx.Err() == nil {
				// Not when the caller gave up: that says nothing of the node.
				s.noteStats(id, inst.Address, err)
			}
			if err != nil {
				m.StatsError = statsError(err)
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

// noteStats logs the outcome of a node's Stats when it changes: a failure
// in full (clients see only statsError's phrase), and the recovery.
func (s *clusterService) noteStats(id, addr string, err error) {
	if err == nil {
		if _, was := s.failing.LoadAndDelete(id); was {
			s.g.cfg.Logger.Info("node answers NodeService.Stats again", slog.String("node", id), slog.String("address", addr))
		}
		return
	}
	phrase := statsError(err)
	if prev, ok := s.failing.Swap(id, phrase); ok && prev == phrase {
		return
	}
	s.g.cfg.Logger.Warn("node's statistics unavailable", slog.String("node", id), slog.String("address", addr), slog.Any("error", err))
}

// statsError is what ClusterService.Status tells clients about a failed
// NodeService.Stats call: a short phrase by code. The error itself can name
// internal addresses and the transport's state, so it is only logged.
func statsError(err error) string {
	switch connect.CodeOf(err) {
	case connect.CodeDeadlineExceeded:
		return "timed out"
	case connect.CodeUnavailable:
		return "unreachable"
	case connect.CodeCanceled:
		return "canceled"
	case connect.CodeUnimplemented:
		return "does not serve NodeService"
	case connect.CodeResourceExhausted:
		return "overloaded"
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return "refused"
	}
	return "failed: " + connect.CodeOf(err).String()
}

// nodeStats asks the node at baseURL for its statistics, within statsTimeout.
// The call bypasses the node's circuit breaker: it observes the node, and
// must neither be refused by an open circuit nor count towards opening one.
func (g *Gateway) nodeStats(ctx context.Context, baseURL string) (*clusterv1.NodeStats, error) {
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	client := clusterv1connect.NewNodeServiceClient(g.backendHTTP, baseURL, append([]connect.ClientOption{connect.WithGRPC()}, g.ownCallOptions...)...)
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

func ringChange(next *discovery.RingRecord) *clusterv1.RingChange {
	rc := &clusterv1.RingChange{Epoch: next.Epoch, Members: next.Members}
	if next.Change != nil {
		rc.Add, rc.Remove = next.Change.Add, next.Change.Remove
	}
	return rc
}

// RemoveNode records the change that moves a member out of the cluster.
func (s *clusterService) RemoveNode(ctx context.Context, req *connect.Request[clusterv1.RemoveNodeRequest]) (*connect.Response[clusterv1.RemoveNodeResponse], error) {
	next, err := discovery.BeginRemove(ctx, s.g.etcd, req.Msg.GetNodeId())
	if err != nil {
		return nil, changeError(err)
	}
	s.g.cfg.Logger.Info("membership change recorded", slog.String("remove", req.Msg.GetNodeId()), slog.Int64("epoch", next.Epoch))
	return connect.NewResponse(&clusterv1.RemoveNodeResponse{Change: ringChange(next)}), nil
}

// AbortChange abandons the membership change in progress.
func (s *clusterService) AbortChange(ctx context.Context, req *connect.Request[clusterv1.AbortChangeRequest]) (*connect.Response[clusterv1.AbortChangeResponse], error) {
	if err := discovery.AbortChange(ctx, s.g.etcd, req.Msg.GetEpoch()); err != nil {
		return nil, changeError(err)
	}
	s.g.cfg.Logger.Info("membership change aborted", slog.Int64("epoch", req.Msg.GetEpoch()))
	return connect.NewResponse(&clusterv1.AbortChangeResponse{}), nil
}

// changeError maps the errors of membership changes to codes.
func changeError(err error) error {
	var inProgress *discovery.ChangeInProgressError
	switch {
	case errors.Is(err, discovery.ErrNotMember):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.As(err, &inProgress), errors.Is(err, discovery.ErrLastMember), errors.Is(err, discovery.ErrNoChange),
		errors.Is(err, discovery.ErrOtherChange), errors.Is(err, discovery.ErrChangeMissed):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, discovery.ErrRingBusy):
		return connect.NewError(connect.CodeAborted, err)
	}
	return connect.NewError(connect.CodeUnavailable, err)
}
