package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/discovery"
)

// clusterTarget is where membership commands go: etcd itself, or a
// gateway's ClusterService.
type clusterTarget struct {
	etcd     []string
	endpoint string
	timeout  time.Duration
	token    string
	tls      clientTLSFlags
}

// connectEtcd returns a client of the target's etcd, living for ctx.
func (t clusterTarget) connectEtcd(ctx context.Context) (*clientv3.Client, error) {
	etcdTLS, err := t.tls.etcdTLS()
	if err != nil {
		return nil, err
	}
	return discovery.Connect(ctx, t.etcd, etcdTLS)
}

// changer starts and follows membership changes through etcd or a
// gateway.
type changer interface {
	remove(ctx context.Context, id string) (*changeStatus, error)
	abort(ctx context.Context, epoch int64) error
	// ring returns the current ring's epoch and members and the change in
	// progress (nil when none).
	ring(ctx context.Context) (int64, []string, *changeStatus, error)
	close()
}

func (t clusterTarget) open(ctx context.Context) (changer, error) {
	if t.endpoint != "" {
		httpc, err := t.tls.httpClient()
		if err != nil {
			return nil, err
		}
		return &gatewayChanger{httpc: httpc.CloseIdleConnections,
			client: clusterv1connect.NewClusterServiceClient(httpc, t.endpoint, connect.WithGRPC(), connect.WithInterceptors(auth.Bearer(t.token)))}, nil
	}
	etcd, err := t.connectEtcd(ctx)
	if err != nil {
		return nil, err
	}
	return etcdChanger{etcd}, nil
}

type etcdChanger struct{ c *clientv3.Client }

func (e etcdChanger) remove(ctx context.Context, id string) (*changeStatus, error) {
	next, err := discovery.BeginRemove(ctx, e.c, id)
	if err != nil {
		return nil, err
	}
	return statusOf(next), nil
}

func (e etcdChanger) abort(ctx context.Context, epoch int64) error {
	return discovery.AbortChange(ctx, e.c, epoch)
}

func (e etcdChanger) ring(ctx context.Context) (int64, []string, *changeStatus, error) {
	cur, next, err := discovery.ReadRings(ctx, e.c)
	if err != nil {
		return 0, nil, nil, err
	}
	var (
		epoch   int64
		members []string
	)
	if cur != nil {
		epoch, members = cur.Epoch, cur.Members
	}
	if next == nil {
		return epoch, members, nil, nil
	}
	return epoch, members, statusOf(next), nil
}

func (e etcdChanger) close() { e.c.Close() }

func statusOf(next *discovery.RingRecord) *changeStatus {
	cs := &changeStatus{Epoch: next.Epoch, Members: next.Members}
	if next.Change != nil {
		cs.Add, cs.Remove = next.Change.Add, next.Change.Remove
	}
	return cs
}

type gatewayChanger struct {
	client clusterv1connect.ClusterServiceClient
	httpc  func()
}

func (g *gatewayChanger) remove(ctx context.Context, id string) (*changeStatus, error) {
	resp, err := g.client.RemoveNode(ctx, connect.NewRequest(&clusterv1.RemoveNodeRequest{NodeId: id}))
	if err != nil {
		return nil, err
	}
	return changeOf(resp.Msg.GetChange()), nil
}

func (g *gatewayChanger) abort(ctx context.Context, epoch int64) error {
	_, err := g.client.AbortChange(ctx, connect.NewRequest(&clusterv1.AbortChangeRequest{Epoch: epoch}))
	return err
}

func (g *gatewayChanger) ring(ctx context.Context) (int64, []string, *changeStatus, error) {
	resp, err := g.client.Status(ctx, connect.NewRequest(&clusterv1.StatusRequest{}))
	if err != nil {
		return 0, nil, nil, err
	}
	if resp.Msg.GetChange() == nil {
		return resp.Msg.GetEpoch(), resp.Msg.GetRingMembers(), nil, nil
	}
	return resp.Msg.GetEpoch(), resp.Msg.GetRingMembers(), changeOf(resp.Msg.GetChange()), nil
}

func (g *gatewayChanger) close() { g.httpc() }

func changeOf(rc *clusterv1.RingChange) *changeStatus {
	return &changeStatus{Epoch: rc.GetEpoch(), Members: rc.GetMembers(), Add: rc.GetAdd(), Remove: rc.GetRemove()}
}

// removeNode records the removal of id and, unless wait is 0, waits until
// the ring has flipped without it.
func removeNode(env *environment, t clusterTarget, id string, wait time.Duration) int {
	ctx, cancel := context.WithTimeout(env.ctx, t.timeout)
	ch, err := t.open(ctx)
	if err != nil {
		cancel()
		fmt.Fprintf(env.stderr, "flux cluster: %v\n", err)
		return exitError
	}
	defer ch.close()
	change, err := ch.remove(ctx, id)
	cancel()
	if err != nil {
		fmt.Fprintf(env.stderr, "flux cluster remove-node: %v\n", err)
		if errors.Is(err, discovery.ErrNotMember) || connect.CodeOf(err) == connect.CodeNotFound {
			return exitNotFound
		}
		return exitError
	}
	fmt.Fprintf(env.stdout, "removing %s: the ring goes to epoch %d (members %v) once the other members hold its keys\n", id, change.Epoch, change.Members)
	if wait == 0 {
		return exitOK
	}
	deadline := time.Now().Add(wait)
	for {
		ctx, cancel := context.WithTimeout(env.ctx, t.timeout)
		epoch, members, next, err := ch.ring(ctx)
		cancel()
		// Decided by the ring itself: another change may reuse the epoch of
		// one that was aborted.
		switch {
		case err != nil:
			fmt.Fprintf(env.stderr, "flux cluster remove-node: %v (still waiting)\n", err)
		case epoch >= change.Epoch && !slices.Contains(members, id):
			fmt.Fprintf(env.stdout, "removed %s: the ring is at epoch %d; stop the node when you like, it holds no keys\n", id, epoch)
			return exitOK
		case next == nil || next.Remove != id:
			fmt.Fprintf(env.stderr, "flux cluster remove-node: the removal of %s was abandoned; the ring is at epoch %d with %s on it\n", id, epoch, id)
			return exitError
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(env.stderr, "flux cluster remove-node: the ring has not flipped after %s; the move goes on (see flux cluster status)\n", wait)
			return exitError
		}
		select {
		case <-env.ctx.Done():
			return exitError
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func abortChange(env *environment, t clusterTarget, epoch int64) int {
	ctx, cancel := context.WithTimeout(env.ctx, t.timeout)
	defer cancel()
	ch, err := t.open(ctx)
	if err != nil {
		fmt.Fprintf(env.stderr, "flux cluster: %v\n", err)
		return exitError
	}
	defer ch.close()
	if err := ch.abort(ctx, epoch); err != nil {
		fmt.Fprintf(env.stderr, "flux cluster abort-change: %v\n", err)
		return exitError
	}
	fmt.Fprintf(env.stdout, "abandoned the change to epoch %d\n", epoch)
	return exitOK
}
