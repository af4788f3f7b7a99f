package main

import (
	"fmt"
	"time"

	"github.com/fluxkv/fluxkv/platform/buildinfo"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

func nodeCommand() *command {
	fs := newFlagSet("node")
	var (
		cfg         kvnode.Config
		cors        = stringList{"*"}
		etcd        stringList
		logs        logFlags
		observe     observeFlags
		secf        securityFlags
		limf        limitFlags
		appendFsync = "everysec"
	)
	cfg.AppendOnly = true
	fs.StringVar(&cfg.Listen, "listen", kvnode.DefaultListen, "`host:port` of the API port (gRPC, gRPC-Web and Connect over h2c, or TLS with --tls-cert)")
	fs.StringVar(&cfg.Advertise, "advertise", "", "`host:port` other nodes, gateways and SDKs dial to reach the API port (default: --listen, with the host name when it listens on all addresses)")
	fs.StringVar(&cfg.AdminListen, "admin-listen", kvnode.DefaultAdminListen, "`host:port` of the admin port (/healthz, /metrics, /debug/pprof/); keep it private")
	fs.StringVar(&cfg.DataDir, "data-dir", kvnode.DefaultDataDir, "`directory` for the node's files; created if missing")
	fs.StringVar(&cfg.NodeID, "node-id", "", "stable `id` of this node: 1-64 letters, digits, '.', '_', '-' (default: the host name)")
	fs.IntVar(&cfg.MaxValueBytes, "max-value-bytes", kvnode.DefaultMaxValueBytes, "largest value, in `bytes`, that a Put accepts")
	fs.Var(&cors, "cors-origins", "comma-separated browser `origins` allowed to call the API; * allows any")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", kvnode.DefaultShutdownTimeout, "on SIGINT/SIGTERM, how long in-flight calls may take to finish")
	fs.BoolVar(&cfg.AppendOnly, "aof", cfg.AppendOnly, "keep an append-only file in the data dir; --aof=false runs purely in memory")
	fs.StringVar(&appendFsync, "appendfsync", appendFsync, "when the append-only file is fsynced: `policy` always, everysec or no")
	fs.Int64Var(&cfg.RewriteMinBytes, "aof-rewrite-min-size", kvnode.DefaultRewriteMinBytes, "rewrite the append-only file only once it is at least this many `bytes`")
	fs.IntVar(&cfg.RewriteGrowthPercent, "aof-rewrite-percentage", kvnode.DefaultRewriteGrowthPercent, "rewrite when the file has grown this `percent` since the last rewrite; -1 turns automatic rewrites off")
	fs.Var(&etcd, "etcd", "comma-separated etcd `endpoints` of the cluster to join (for example http://127.0.0.1:2379); empty runs a standalone node")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", discovery.DefaultTTL, "how long the node stays live in etcd after it stops renewing its lease")
	fs.BoolVar(&cfg.Join, "join", false, "join a cluster that holds data as a new member: the keys that move to this node are copied from their owners while the cluster serves, and the ring flips to include it once it holds them")
	fs.BoolVar(&cfg.AcceptKeyMovement, "accept-key-movement", false, "join a cluster that holds data at once, without copying: the keys that move to this node are lost (for disposable data; prefer --join)")
	fs.StringVar(&cfg.AMQPURL, "amqp-url", "", "RabbitMQ `URL` (amqp://user:pass@host:5672/) to publish every change to, on the flux.cdc exchange; empty turns CDC off")
	fs.StringVar(&cfg.CDCQueue, "cdc-queue", "", "durable `queue` to declare and bind to the flux.cdc exchange, so changes accumulate while no consumer runs")
	fs.Int64Var(&cfg.CDCMaxLag, "cdc-max-lag", 100000, "log an error while the CDC relay is more than this many `revisions` behind (0: never)")
	fs.DurationVar(&cfg.CDCMaxLagAge, "cdc-max-lag-age", time.Minute, "log an error while the oldest change not yet confirmed by RabbitMQ is older than this `duration` (0: never)")
	secf.register(fs, true)
	limf.registerNode(fs)
	observe.register(fs)
	logs.register(fs)

	c := &command{
		name:    "node",
		summary: "Run a Flux-KV node: serves flux.kv.v1.KVService until SIGINT or SIGTERM.",
		flags:   fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) > 0 {
			return usageError(env, c.name, "unexpected arguments %q", args)
		}
		logger, err := logs.logger(env)
		if err != nil {
			return usageError(env, c.name, "%v", err)
		}
		cfg.Logger = logger
		policy, err := changelog.ParsePolicy(appendFsync)
		if err != nil {
			return usageError(env, c.name, "--appendfsync: %v", err)
		}
		cfg.AppendFsync = policy
		cfg.CORSOrigins = cors
		cfg.Etcd = etcd
		cfg.HTTP, cfg.Limits = limf.http, limf.node
		sec, err := secf.open(env.ctx, logger)
		if err != nil {
			return usageError(env, c.name, "%v", err)
		}
		cfg.Auth, cfg.AuthReflection, cfg.PeerToken, cfg.Insecure = sec.auth, sec.authReflection, sec.peerToken, sec.insecure
		cfg.TLS, cfg.PeerTLS, cfg.EtcdTLS = sec.tls, sec.peerTLS, sec.etcdTLS
		cfg.AMQPTLS = sec.amqpTLS
		return runNode(env, cfg, &observe)
	}
	return c
}

func runNode(env *environment, cfg kvnode.Config, observe *observeFlags) int {
	return runServer(env, "node", cfg.NodeID, cfg.Logger, observe, func(p serverParts) (server, error) {
		cfg.Interceptors, cfg.ClientInterceptors, cfg.Middleware, cfg.Registry = p.Interceptors, p.ClientInterceptors, p.Middleware, p.Registry
		return kvnode.New(cfg)
	})
}

func versionCommand() *command {
	return &command{
		name:    "version",
		summary: "Print the version of this binary.",
		flags:   newFlagSet("version"),
		run: func(env *environment, _ []string) int {
			fmt.Fprintln(env.stdout, buildinfo.String())
			return exitOK
		},
	}
}
