package main

import (
	"fmt"
	"time"

	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/services/gateway"
	"github.com/fluxkv/fluxkv/web"
)

func gatewayCommand() *command {
	fs := newFlagSet("gateway")
	var (
		cfg     gateway.Config
		cors    = stringList{"*"}
		etcd    stringList
		logs    logFlags
		observe observeFlags
		secf    securityFlags
		limf    limitFlags
	)
	cfg.Policies.Singleflight = true
	fs.StringVar(&cfg.Listen, "listen", gateway.DefaultListen, "`host:port` of the API port (gRPC, gRPC-Web and Connect over h2c, or TLS with --tls-cert)")
	fs.StringVar(&cfg.Advertise, "advertise", "", "`host:port` others dial to reach the API port, as registered in etcd (default: --listen, with the host name when it listens on all addresses)")
	fs.StringVar(&cfg.AdminListen, "admin-listen", gateway.DefaultAdminListen, "`host:port` of the admin port (/healthz, /metrics, /debug/pprof/, /breakers); keep it private")
	fs.Var(&etcd, "etcd", "comma-separated etcd `endpoints` to discover services from (required)")
	fs.StringVar(&cfg.ID, "id", "", "`id` of this gateway in etcd (default: host name and port)")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", discovery.DefaultTTL, "how long the gateway stays registered after it stops renewing its lease")
	fs.DurationVar(&cfg.DefaultTimeout, "default-timeout", gateway.DefaultTimeout, "deadline of calls that come without one")
	fs.IntVar(&cfg.MaxMessageBytes, "max-message-bytes", gateway.DefaultMaxMessageBytes, "largest message, in `bytes`, in either direction")
	fs.Var(&cors, "cors-origins", "comma-separated browser `origins` allowed to call the API; * allows any")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", gateway.DefaultShutdownTimeout, "on SIGINT/SIGTERM, how long in-flight calls may take to finish")
	fs.Float64Var(&cfg.Policies.RateLimit.GlobalRate, "rate-limit", 0, "calls per second for all gateways together, shared among the live ones (0: no limit)")
	fs.IntVar(&cfg.Policies.RateLimit.GlobalBurst, "rate-burst", 0, "calls above the global rate allowed at once (0: the rate)")
	fs.Float64Var(&cfg.Policies.RateLimit.ClientRate, "client-rate-limit", 0, "calls per second per client (0: no limit)")
	fs.IntVar(&cfg.Policies.RateLimit.ClientBurst, "client-rate-burst", 0, "calls above a client's rate allowed at once (0: the rate)")
	fs.StringVar(&cfg.Policies.RateLimit.ClientKeyHeader, "client-key-header", "Flux-Api-Key", "request `header` that identifies a client; without it, the client's IP address does")
	fs.Func("breaker-failures", "consecutive `failures` (unavailable, deadline exceeded, internal) of a backend instance that open its circuit (default 5)", func(s string) error {
		var n uint32
		if _, err := fmt.Sscan(s, &n); err != nil || n == 0 {
			return fmt.Errorf("%q: want a positive number", s)
		}
		cfg.Policies.Breaker.ConsecutiveFailures = n
		return nil
	})
	fs.DurationVar(&cfg.Policies.Breaker.OpenTimeout, "breaker-cooldown", 5*time.Second, "how long an open circuit refuses calls before one probe is let through")
	fs.BoolVar(&cfg.Policies.Singleflight, "singleflight", cfg.Policies.Singleflight, "share one backend call among identical concurrent calls to methods without side effects")
	secf.register(fs, false)
	limf.register(fs)
	observe.register(fs)
	logs.register(fs)

	c := &command{
		name:    "gateway",
		summary: "Run the API gateway: serves every service registered in etcd, routed by the schema.",
		flags:   fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) > 0 {
			return usageError(env, c.name, "unexpected arguments %q", args)
		}
		if len(etcd) == 0 {
			return usageError(env, c.name, "--etcd is required")
		}
		logger, err := logs.logger(env)
		if err != nil {
			return usageError(env, c.name, "%v", err)
		}
		cfg.Logger, cfg.CORSOrigins, cfg.Etcd = logger, cors, etcd
		cfg.Console = web.Handler()
		cfg.HTTP = limf.http
		sec, err := secf.open(env.ctx, logger)
		if err != nil {
			return usageError(env, c.name, "%v", err)
		}
		cfg.Auth, cfg.AuthReflection, cfg.PeerToken, cfg.Insecure = sec.auth, sec.authReflection, sec.peerToken, sec.insecure
		cfg.TLS, cfg.PeerTLS, cfg.EtcdTLS = sec.tls, sec.peerTLS, sec.etcdTLS
		return runGateway(env, cfg, &observe)
	}
	return c
}

func runGateway(env *environment, cfg gateway.Config, observe *observeFlags) int {
	return runServer(env, "gateway", cfg.ID, cfg.Logger, observe, func(p serverParts) (server, error) {
		cfg.Interceptors, cfg.ClientInterceptors, cfg.Middleware, cfg.Registry = p.Interceptors, p.ClientInterceptors, p.Middleware, p.Registry
		return gateway.New(cfg)
	})
}
