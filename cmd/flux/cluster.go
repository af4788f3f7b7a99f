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

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/discovery"
)

func clusterCommand() *command {
	fs := newFlagSet("cluster")
	var (
		etcd     stringList
		endpoint string
		timeout  = 5 * time.Second
		wait     = 10 * time.Minute
		epoch    int64
		asJSON   bool
		token    string
		tlsf     clientTLSFlags
	)
	fs.Var(&etcd, "etcd", "comma-separated etcd `endpoints` of the cluster")
	fs.StringVar(&endpoint, "endpoint", "", "`URL` of a gateway, instead of --etcd (remove-node and abort-change)")
	fs.DurationVar(&timeout, "timeout", timeout, "deadline for each request (status: for the whole command)")
	fs.DurationVar(&wait, "wait", wait, "remove-node: how long to wait for the keys to move and the ring to flip; 0 returns once the change is recorded")
	fs.Int64Var(&epoch, "epoch", 0, "abort-change: the epoch of the change to abandon, as status shows it")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON, for scripts")
	fs.StringVar(&token, "token", "", "bearer `token` for nodes and gateways started with --auth-file (status needs read, remove-node and abort-change through --endpoint admin); prefer FLUX_TOKEN")
	tlsf.registerAPI(fs)
	tlsf.registerEtcd(fs)
	c := &command{
		name: "cluster",
		args: "status | remove-node ID | abort-change --epoch N",
		summary: "status prints the cluster's ring epoch and members (live, addresses, version, keys held) and any membership change in progress; exits 1 if a member is down. " +
			"remove-node moves a member's keys to the others and takes it off the ring, waiting for the move. abort-change abandons the change in progress.",
		flags: fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) == 0 {
			return usageError(env, c.name, "want: flux cluster status | remove-node ID | abort-change --epoch N")
		}
		if (len(etcd) == 0) == (endpoint == "") && !(args[0] == "status" && endpoint == "" && len(etcd) == 0) {
			return usageError(env, c.name, "give one of --etcd and --endpoint")
		}
		switch {
		case args[0] == "status" && len(args) == 1:
			if len(etcd) == 0 {
				return usageError(env, c.name, "status needs --etcd")
			}
			ctx, cancel := context.WithTimeout(env.ctx, timeout)
			defer cancel()
			return clusterStatus(ctx, env, clusterTarget{etcd: etcd, timeout: timeout, token: token, tls: tlsf}, asJSON)
		case args[0] == "remove-node" && len(args) == 2:
			return removeNode(env, clusterTarget{etcd: etcd, endpoint: endpoint, timeout: timeout, token: token, tls: tlsf}, args[1], wait)
		case args[0] == "abort-change" && len(args) == 1:
			if epoch <= 1 {
				return usageError(env, c.name, "abort-change needs --epoch, the epoch of the change in progress (see flux cluster status)")
			}
			return abortChange(env, clusterTarget{etcd: etcd, endpoint: endpoint, timeout: timeout, token: token, tls: tlsf}, epoch)
		}
		return usageError(env, c.name, "want: flux cluster status | remove-node ID | abort-change --epoch N")
	}
	return c
}

// clusterStatusJSON is what cluster status --json prints.
type clusterStatusJSON struct {
	Epoch    int64           `json:"epoch"` // 0: the cluster has no ring record yet
	Change   *changeStatus   `json:"change,omitempty"`
	Members  []memberStatus  `json:"members"`
	Gateways []gatewayStatus `json:"gateways"`
}

type memberStatus struct {
	ID           string `json:"id"`
	Live         bool   `json:"live"`
	Address      string `json:"address,omitempty"`
	AdminAddress string `json:"admin_address,omitempty"`
	Version      string `json:"version,omitempty"`
	StartedAt    string `json:"started_at,omitempty"`
	Keys         *int64 `json:"keys,omitempty"`
	// Handoffs are the copies the node receives while the ring changes.
	Handoffs []handoffStatus `json:"handoffs,omitempty"`
}

type handoffStatus struct {
	Source     string `json:"source"`
	State      string `json:"state"`
	KeysCopied int64  `json:"keys_copied"`
	Lag        int64  `json:"lag_revisions"`
	Attempts   int32  `json:"attempts"`
	LastError  string `json:"last_error,omitempty"`
}

// changeStatus is the membership change in progress.
type changeStatus struct {
	Epoch   int64    `json:"epoch"`
	Members []string `json:"members"`
	Add     string   `json:"add,omitempty"`
	Remove  string   `json:"remove,omitempty"`
}

func (c *changeStatus) describe() string {
	if c.Add != "" {
		return "adding " + c.Add
	}
	return "removing " + c.Remove
}

func clusterStatus(ctx context.Context, env *environment, t clusterTarget, asJSON bool) int {
	httpc, err := t.tls.httpClient()
	if err != nil {
		return fail(env, "cluster", err)
	}
	defer httpc.CloseIdleConnections()
	etcd, err := t.connectEtcd(ctx)
	if err != nil {
		return fail(env, "cluster", err)
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
	ids := snap.StatusMembers()
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
			if stats, err := nodeStats(ctx, httpc, inst.URL(), t.token); err == nil {
				n := stats.GetKeyCount()
				m.Keys = &n
				for _, h := range stats.GetHandoffs() {
					m.Handoffs = append(m.Handoffs, handoffStatus{
						Source: h.GetSource(), State: strings.TrimPrefix(h.GetState().String(), "HANDOFF_STATE_"),
						KeysCopied: h.GetKeysCopied(), Lag: h.GetLagRevisions(), Attempts: h.GetAttempts(), LastError: h.GetLastError(),
					})
				}
			}
		})
	}
	gateways := gatewayStatuses(ctx, &wg, snap, httpc, t.token)
	wg.Wait()
	var change *changeStatus
	if snap.Next != nil {
		change = &changeStatus{Epoch: snap.Next.Epoch, Members: snap.Next.Members}
		if snap.Next.Change != nil {
			change.Add, change.Remove = snap.Next.Change.Add, snap.Next.Change.Remove
		}
	}
	if asJSON {
		printJSON(env, clusterStatusJSON{snap.Epoch(), change, members, gateways})
	} else {
		if snap.Current != nil {
			fmt.Fprintf(env.stdout, "ring epoch %d\n", snap.Epoch())
		} else {
			fmt.Fprint(env.stdout, "ring epoch - (no ring record yet: routed by /flux/members/)\n")
		}
		if change != nil {
			fmt.Fprintf(env.stdout, "change in progress: %s, to epoch %d (members %s)\n", change.describe(), change.Epoch, strings.Join(change.Members, ", "))
		}
		fmt.Fprintln(env.stdout)
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
		if change != nil {
			fmt.Fprintln(env.stdout)
			tw = tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TARGET\tSOURCE\tSTATE\tCOPIED\tLAG\tATTEMPTS\tLAST ERROR")
			for _, m := range members {
				for _, h := range m.Handoffs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", m.ID, h.Source, h.State, h.KeysCopied, h.Lag, h.Attempts, dash(h.LastError))
				}
			}
			tw.Flush()
		}
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

// nodeStats asks the node at baseURL (its API port) for its statistics,
// within askTimeout.
func nodeStats(ctx context.Context, httpc *http.Client, baseURL, token string) (*clusterv1.NodeStats, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	client := clusterv1connect.NewNodeServiceClient(httpc, baseURL, connect.WithGRPC(), connect.WithInterceptors(auth.Bearer(token)))
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
func gatewayStatuses(ctx context.Context, wg *sync.WaitGroup, snap *discovery.Snapshot, httpc *http.Client, token string) []gatewayStatus {
	ids := slices.Sorted(maps.Keys(snap.Gateways))
	out := make([]gatewayStatus, len(ids))
	for i, id := range ids {
		inst := snap.Gateways[id]
		g := &out[i]
		*g = gatewayStatus{ID: id, Address: inst.Address, AdminAddress: inst.AdminAddress}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, askTimeout)
			defer cancel()
			switch err := getJSON(ctx, httpc, inst.AdminURL()+"/breakers", token, &g.Breakers); {
			case errors.Is(err, context.DeadlineExceeded):
				g.Error = "timed out"
			case err != nil:
				g.Error = err.Error()
			}
		})
	}
	return out
}

// getJSON reads url's JSON answer into v, with the bearer token if one is
// given (admin ports need one with the admin scope).
func getJSON(ctx context.Context, httpc *http.Client, url, token string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set(auth.Header, "Bearer "+token)
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
