package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/discovery"
)

func clusterCommand() *command {
	fs := newFlagSet("cluster")
	var (
		etcd    stringList
		timeout = 5 * time.Second
		asJSON  bool
	)
	fs.Var(&etcd, "etcd", "comma-separated etcd `endpoints` of the cluster (required)")
	fs.DurationVar(&timeout, "timeout", timeout, "deadline for the whole command")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON, for scripts")
	c := &command{
		name:    "cluster",
		args:    "status",
		summary: "Print the cluster's ring epoch and members: whether each is live, its addresses, version and keys held. Exits 1 if a member is down.",
		flags:   fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) != 1 || args[0] != "status" {
			return usageError(env, c.name, "want: flux cluster status --etcd ENDPOINTS")
		}
		if len(etcd) == 0 {
			return usageError(env, c.name, "--etcd is required")
		}
		ctx, cancel := context.WithTimeout(env.ctx, timeout)
		defer cancel()
		return clusterStatus(ctx, env, etcd, asJSON)
	}
	return c
}

type memberStatus struct {
	ID           string `json:"id"`
	Live         bool   `json:"live"`
	Address      string `json:"address,omitempty"`
	AdminAddress string `json:"admin_address,omitempty"`
	Version      string `json:"version,omitempty"`
	StartedAt    string `json:"started_at,omitempty"`
	Keys         *int64 `json:"keys,omitempty"`
}

func clusterStatus(ctx context.Context, env *environment, endpoints []string, asJSON bool) int {
	httpc := httpClient()
	defer httpc.CloseIdleConnections()
	etcd, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Context: ctx, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintf(env.stderr, "flux cluster: connect to etcd: %v\n", err)
		return exitError
	}
	defer etcd.Close()
	w := discovery.NewWatcher(etcd, nil)
	if err := w.Start(ctx); err != nil {
		fmt.Fprintf(env.stderr, "flux cluster: %v\n", err)
		return exitError
	}
	snap := w.Snapshot()
	w.Close()

	// Every node and gateway is asked at once, each within askTimeout, so
	// one that hangs costs the command that long and hides nothing else.
	var wg sync.WaitGroup
	ids := snap.RingMembers()
	members := make([]memberStatus, len(ids))
	down := 0
	for i, id := range ids {
		m := &members[i]
		m.ID = id
		inst, ok := snap.Instances[kvv1connect.KVServiceName][id]
		if !ok {
			down++
			continue
		}
		m.Live, m.Address, m.AdminAddress, m.Version = true, inst.Address, inst.AdminAddress, inst.Version
		m.StartedAt = inst.StartedAt.Format(time.RFC3339)
		wg.Go(func() {
			if stats, err := nodeStats(ctx, httpc, inst.Address); err == nil {
				n := stats.GetKeyCount()
				m.Keys = &n
			}
		})
	}
	gateways := gatewayStatuses(ctx, &wg, snap)
	wg.Wait()
	if asJSON {
		printJSON(env, struct {
			Epoch    int64           `json:"epoch"` // 0: the cluster has no ring record yet
			Members  []memberStatus  `json:"members"`
			Gateways []gatewayStatus `json:"gateways"`
		}{snap.Epoch(), members, gateways})
	} else {
		if snap.Current != nil {
			fmt.Fprintf(env.stdout, "ring epoch %d\n\n", snap.Epoch())
		} else {
			fmt.Fprint(env.stdout, "ring epoch - (no ring record yet: routed by /flux/members/)\n\n")
		}
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tLIVE\tADDRESS\tADMIN\tKEYS\tVERSION\tSTARTED")
		for _, m := range members {
			live, keys := "no", "-"
			if m.Live {
				live = "yes"
			}
			if m.Keys != nil {
				keys = strconv.FormatInt(*m.Keys, 10)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, live, dash(m.Address), dash(m.AdminAddress), keys, dash(m.Version), dash(m.StartedAt))
		}
		tw.Flush()
		if len(gateways) > 0 {
			fmt.Fprintln(env.stdout)
			tw = tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GATEWAY\tADDRESS\tADMIN\tCIRCUITS")
			for _, g := range gateways {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.ID, g.Address, g.AdminAddress, g.circuits())
			}
			tw.Flush()
		}
	}
	if len(members) == 0 {
		fmt.Fprintln(env.stderr, "flux cluster: no members registered in etcd")
		return exitNotFound
	}
	if down > 0 {
		return exitNotFound
	}
	return exitOK
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// askTimeout bounds each call cluster status makes to a node or a gateway.
const askTimeout = time.Second

// nodeStats asks the node at addr (its API port) for its statistics,
// within askTimeout.
func nodeStats(ctx context.Context, httpc *http.Client, addr string) (*clusterv1.NodeStats, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	client := clusterv1connect.NewNodeServiceClient(httpc, "http://"+addr, connect.WithGRPC())
	resp, err := client.Stats(ctx, connect.NewRequest(&clusterv1.StatsRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg.GetStats(), nil
}

// gatewayStatus is a live gateway and the state of its circuit breakers,
// one per backend instance it has called (service/instance).
type gatewayStatus struct {
	ID           string            `json:"id"`
	Address      string            `json:"address"`
	AdminAddress string            `json:"admin_address"`
	Breakers     map[string]string `json:"breakers,omitempty"`
	Error        string            `json:"error,omitempty"`
}

func (g gatewayStatus) circuits() string {
	if g.Error != "" {
		return "unknown: " + g.Error
	}
	names := slices.Sorted(maps.Keys(g.Breakers))
	parts := make([]string, 0, len(names))
	for _, name := range names {
		parts = append(parts, name+"="+g.Breakers[name])
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// gatewayStatuses asks every live gateway for its breakers' states, each
// within askTimeout, on goroutines of wg: the statuses are complete when wg
// is done.
func gatewayStatuses(ctx context.Context, wg *sync.WaitGroup, snap *discovery.Snapshot) []gatewayStatus {
	ids := slices.Sorted(maps.Keys(snap.Gateways))
	out := make([]gatewayStatus, len(ids))
	for i, id := range ids {
		inst := snap.Gateways[id]
		g := &out[i]
		*g = gatewayStatus{ID: id, Address: inst.Address, AdminAddress: inst.AdminAddress}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, askTimeout)
			defer cancel()
			switch err := getJSON(ctx, "http://"+inst.AdminAddress+"/breakers", &g.Breakers); {
			case errors.Is(err, context.DeadlineExceeded):
				g.Error = "timed out"
			case err != nil:
				g.Error = err.Error()
			}
		})
	}
	return out
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
