package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/etcdembed"
	"github.com/fluxkv/fluxkv/services/gateway"
	"github.com/fluxkv/fluxkv/services/kvnode"
	"github.com/fluxkv/fluxkv/web"
)

func devCommand() *command {
	fs := newFlagSet("dev")
	var (
		dataDir     = "./flux-data"
		nodes       = 3
		etcdListen  = "http://127.0.0.1:2379"
		basePort    = 7701
		adminBase   = 9701
		appendFsync = "everysec"
		amqpURL     string
		cdcQueue    string
		gwListen    = gateway.DefaultListen
		gwAdmin     = gateway.DefaultAdminListen
		logLevel    slog.Level
		authFile    string
	)
	fs.StringVar(&dataDir, "data-dir", dataDir, "`directory` holding etcd's and every node's data; running again recovers it")
	fs.IntVar(&nodes, "nodes", nodes, "number of nodes")
	fs.StringVar(&etcdListen, "etcd-listen", etcdListen, "client `URL` of the embedded etcd, which etcdctl and other processes can join")
	fs.IntVar(&basePort, "base-port", basePort, "API `port` of the first node; the others follow (0: any free ports)")
	fs.IntVar(&adminBase, "admin-base-port", adminBase, "admin `port` of the first node; the others follow (0: any free ports)")
	fs.StringVar(&appendFsync, "appendfsync", appendFsync, "fsync `policy` of every node: always, everysec or no")
	fs.StringVar(&amqpURL, "amqp-url", "", "RabbitMQ `URL` every node publishes its changes to (flux.cdc exchange); empty turns CDC off")
	fs.StringVar(&cdcQueue, "cdc-queue", "", "durable `queue` to declare and bind to the flux.cdc exchange")
	fs.StringVar(&gwListen, "gateway-listen", gwListen, "`host:port` of the gateway in front of the nodes")
	fs.StringVar(&gwAdmin, "gateway-admin-listen", gwAdmin, "`host:port` of the gateway's admin port")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error")
	fs.StringVar(&authFile, "auth-file", "", "token `file` the nodes and the gateway require a bearer token of (see flux token); reloaded on SIGHUP. Empty: no authentication")
	c := &command{
		name:    "dev",
		summary: "Run a whole cluster in this process: an embedded etcd and N nodes, until Ctrl-C.",
		flags:   fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) > 0 {
			return usageError(env, c.name, "unexpected arguments %q", args)
		}
		if nodes < 1 {
			return usageError(env, c.name, "--nodes %d: need at least 1", nodes)
		}
		policy, err := changelog.ParsePolicy(appendFsync)
		if err != nil {
			return usageError(env, c.name, "--appendfsync: %v", err)
		}
		logger := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: logLevel}))
		return runDev(env, logger, devConfig{dataDir, nodes, etcdListen, basePort, adminBase, policy, amqpURL, cdcQueue, gwListen, gwAdmin, authFile})
	}
	return c
}

type devConfig struct {
	dataDir    string
	nodes      int
	etcdListen string
	basePort   int
	adminBase  int
	policy     changelog.Policy
	amqpURL    string
	cdcQueue   string
	gwListen   string
	gwAdmin    string
	authFile   string
}

func runDev(env *environment, logger *slog.Logger, cfg devConfig) int {
	etcd, err := etcdembed.Start(filepath.Join(cfg.dataDir, "etcd"), cfg.etcdListen)
	if err != nil {
		fmt.Fprintf(env.stderr, "flux dev: %v\n", err)
		return exitError
	}
	defer etcd.Close()
	// With a token file, the nodes and the gateway call each other with a
	// token of their own, made for this run and never written anywhere.
	secf := securityFlags{authFile: cfg.authFile}
	sec, err := secf.open(env.ctx, logger)
	if err != nil {
		fmt.Fprintf(env.stderr, "flux dev: %v\n", err)
		return exitError
	}
	tokens := sec.auth
	var peerToken string
	if tokens != nil {
		if peerToken, err = auth.NewToken(); err != nil {
			fmt.Fprintf(env.stderr, "flux dev: %v\n", err)
			return exitError
		}
		tokens.Allow(peerToken, auth.ScopeAdmin, "flux-dev-peers")
	}
	var running []*kvnode.Node
	defer func() {
		// Reverse order; each node leaves the cluster before it drains.
		for i := len(running) - 1; i >= 0; i-- {
			if err := running[i].Shutdown(context.Background()); err != nil {
				logger.Error("shutdown", slog.Any("error", err))
			}
		}
	}()
	for i := range cfg.nodes {
		id := fmt.Sprintf("node-%d", i+1)
		node, err := kvnode.New(kvnode.Config{
			NodeID:      id,
			Listen:      devAddr(cfg.basePort, i),
			AdminListen: devAddr(cfg.adminBase, i),
			DataDir:     filepath.Join(cfg.dataDir, id),
			AppendOnly:  true,
			AppendFsync: cfg.policy,
			Etcd:        []string{etcd.ClientURL()},
			AMQPURL:     cfg.amqpURL,
			CDCQueue:    cfg.cdcQueue,
			Auth:        tokens,
			PeerToken:   peerToken,
			Logger:      logger.With(slog.String("node", id)),
		})
		if err != nil {
			fmt.Fprintf(env.stderr, "flux dev: %s: %v\n", id, err)
			return exitError
		}
		ctx, cancel := context.WithTimeout(env.ctx, 30*time.Second)
		err = node.Start(ctx)
		cancel()
		running = append(running, node)
		if err != nil {
			fmt.Fprintf(env.stderr, "flux dev: %s: %v\n", id, err)
			return exitError
		}
	}
	gw, err := gateway.New(gateway.Config{
		ID: "gateway", Listen: cfg.gwListen, AdminListen: cfg.gwAdmin, Etcd: []string{etcd.ClientURL()},
		Logger:   logger.With(slog.String("node", "gateway")),
		Policies: gateway.Policies{Singleflight: true},
		Console:  web.Handler(),
		Auth:     tokens, PeerToken: peerToken,
	})
	if err != nil {
		fmt.Fprintf(env.stderr, "flux dev: gateway: %v\n", err)
		return exitError
	}
	// The gateway goes first at shutdown: it stops taking calls before the
	// nodes behind it leave.
	defer func() {
		if err := gw.Shutdown(context.Background()); err != nil {
			logger.Error("gateway shutdown", slog.Any("error", err))
		}
	}()
	ctx, cancel := context.WithTimeout(env.ctx, 30*time.Second)
	err = gw.Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(env.stderr, "flux dev: gateway: %v\n", err)
		return exitError
	}
	fmt.Fprintf(env.stdout, "Flux-KV dev cluster is up (data in %s)\n", cfg.dataDir)
	fmt.Fprintf(env.stdout, "  gateway  %s   admin %s\n", gw.APIURL(), gw.AdminURL())
	fmt.Fprintf(env.stdout, "  console  %s/ui/\n", gw.APIURL())
	fmt.Fprintf(env.stdout, "  etcd     %s\n", etcd.ClientURL())
	for i, node := range running {
		fmt.Fprintf(env.stdout, "  node-%d   %s   admin %s\n", i+1, node.APIURL(), node.AdminURL())
	}
	if cfg.amqpURL != "" {
		fmt.Fprintf(env.stdout, "  cdc      every change goes to RabbitMQ exchange flux.cdc; try: flux cdc tail\n")
	}
	fmt.Fprintf(env.stdout, "The CLI reaches the gateway by default (%s); any node also answers any key.\nCtrl-C stops everything; running flux dev again recovers the data.\n", gw.APIURL())
	<-env.ctx.Done()
	logger.Info("shutting down the dev cluster")
	return exitOK
}

// devAddr is the loopback address of node i's port counting from base, or
// any free port when base is 0.
func devAddr(base, i int) string {
	if base == 0 {
		return "127.0.0.1:0"
	}
	return fmt.Sprintf("127.0.0.1:%d", base+i)
}
