// Package gateway is Flux-KV's generic API gateway. It serves every method
// of every service registered in etcd under /flux/services/ (Flux-KV's own
// and anyone else's) on one h2c port speaking gRPC, gRPC-Web and Connect,
// without generated code: it learns each service's schema (compiled in, or
// by gRPC reflection from an instance), handles calls as dynamic messages
// and forwards them over gRPC to the instance the schema's routing asks
// for: the ring owner of the field marked (flux.routing.v1.shard_key), or
// the next live instance. Rate limits, circuit breakers, singleflight,
// default deadlines, tracing, metrics and an access log apply to every
// call.
//
// The gateway also answers flux.cluster.v1.ClusterService itself, from its
// view of etcd, its breakers and each node's NodeService, and serves the
// web console (Config.Console) at /ui/.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/admin"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/buildinfo"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/rpcserver"
	"github.com/fluxkv/fluxkv/platform/telemetry"
)

// Defaults for Config fields left at their zero value.
const (
	DefaultListen          = "127.0.0.1:7700"
	DefaultAdminListen     = "127.0.0.1:9700"
	DefaultTimeout         = 30 * time.Second
	DefaultMaxMessageBytes = 4<<20 + 64<<10
	DefaultShutdownTimeout = 10 * time.Second

	// compressMinBytes: smaller responses are not worth compressing.
	compressMinBytes = 4 << 10
	// bodyOverhead is room for framing around a message of the maximum size.
	bodyOverhead = 64 << 10
	// startTimeout bounds Start when its context has no deadline.
	startTimeout = 30 * time.Second
	// resolveTimeout bounds fetching one service's schema by reflection.
	resolveTimeout = 5 * time.Second
	// resolveRetry is how often services whose schema could not be fetched
	// are tried again.
	resolveRetry = 5 * time.Second
)

// Config configures a Gateway.
type Config struct {
	ID              string        // instance id in etcd; defaults to host name and port
	Listen          string        // API address (host:port)
	Advertise       string        // API address others dial (host:port); default: Listen, with the host name for 0.0.0.0
	AdminListen     string        // admin address: /healthz, /metrics, /debug/pprof/, /breakers
	Etcd            []string      // etcd endpoints (required)
	LeaseTTL        time.Duration // registration lease (default discovery.DefaultTTL)
	DefaultTimeout  time.Duration // deadline of calls that come without one
	MaxMessageBytes int           // largest message in either direction
	CORSOrigins     []string      // browser origins; nil means "*"
	ShutdownTimeout time.Duration
	Logger          *slog.Logger

	Policies Policies // rate limits, breakers, singleflight
	// Auth, when set, is the token file every call to the gateway (proxied
	// or its own ClusterService; not health, reflection or the console's
	// files) must present a token of. Proxied calls carry the caller's token
	// on to the backend, which checks it again. PeerToken is sent on the
	// gateway's own calls to nodes (their statistics, for Status).
	Auth      *auth.File
	PeerToken string
	// AuthReflection makes server reflection need a token (read) too.
	AuthReflection bool
	// Insecure acknowledges listeners reachable from other hosts without
	// TLS; without it the gateway logs a loud warning for each.
	Insecure bool

	// TLS, when set, makes both ports serve TLS only (see
	// rpcserver.Options.TLS). PeerTLS configures calls to backends that
	// serve TLS (their registration says so; nil: the system's roots, no
	// client certificate); EtcdTLS the connection to etcd.
	TLS, PeerTLS, EtcdTLS *tls.Config
	// HTTP bounds what each client connection may hold of the API port.
	HTTP rpcserver.Limits

	// Interceptors run on every proxied call on the gateway's side (tracing,
	// access log, metrics); ClientInterceptors on its calls to backends.
	Interceptors       []connect.Interceptor
	ClientInterceptors []connect.Interceptor
	// Middleware wraps the API port's handler, outermost first (access log).
	Middleware []func(http.Handler) http.Handler
	// Registry receives the gateway's metrics; nil creates one.
	Registry *prometheus.Registry
	// Console, when set, serves the web console's files from its root; the
	// gateway mounts it at /ui/, outside the rate limits, which count calls.
	Console http.Handler
}

func (c *Config) setDefaults() error {
	if len(c.Etcd) == 0 {
		return errors.New("gateway: etcd endpoints are required")
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.AdminListen == "" {
		c.AdminListen = DefaultAdminListen
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = discovery.DefaultTTL
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = DefaultTimeout
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.CORSOrigins == nil {
		c.CORSOrigins = []string{"*"}
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	return nil
}

// Gateway is a running gateway. Create it with New, Start it, stop it with
// Shutdown.
type Gateway struct {
	cfg         Config
	etcd        *clientv3.Client
	watcher     *discovery.Watcher
	reg         *discovery.Registration
	schemas     *schemaSource
	backendHTTP *http.Client
	api, admin  *rpcserver.Server
	// own are the services the gateway answers itself (ClusterService), for
	// reflection.
	own []*resolved

	handlerOptions []connect.HandlerOption
	clientOptions  []connect.ClientOption // proxied calls
	ownCallOptions []connect.ClientOption // the gateway's own calls to nodes, with its peer token
	limiter        limiter
	breakers       breakers
	flight         flight

	table     atomic.Pointer[table]
	rings     rings
	counters  sync.Map // service -> *atomic.Uint64
	clients   sync.Map // procedure@addr -> *connect.Client
	draining  atomic.Bool
	following atomic.Bool  // the refresh loop runs
	gateways  atomic.Int64 // live gateways, for sharing the global rate

	errc         chan error
	stopc, donec chan struct{} // the refresh loop
	shutdownOnce sync.Once
	shutdownErr  error
	closed       chan struct{}
}

// table is the set of services and methods being served; it is replaced
// whole on every change.
type table struct {
	services map[string]*resolved
	methods  map[string]*method // by procedure
	failed   map[string]bool    // services whose schema could not be fetched yet
}

func (t *table) names() []string {
	names := make([]string, 0, len(t.services))
	for name := range t.services {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// New validates cfg, connects to etcd and binds both listeners.
func New(cfg Config) (_ *Gateway, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if cfg.ID == "" {
		host, herr := os.Hostname()
		if herr != nil {
			return nil, fmt.Errorf("default gateway id from host name: %w", herr)
		}
		_, port, _ := net.SplitHostPort(cfg.Listen)
		cfg.ID = host + "-" + port
	}
	// Backends that serve TLS are dialed over it; the others in cleartext.
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	protocols.SetHTTP2(true)
	g := &Gateway{
		cfg: cfg,
		backendHTTP: &http.Client{Transport: &http.Transport{
			Protocols:       &protocols,
			TLSClientConfig: cfg.PeerTLS.Clone(), // its transport adds h2 to the ALPN list
			DialContext:     (&net.Dialer{Timeout: time.Second}).DialContext,
			HTTP2:           &http.HTTP2Config{SendPingTimeout: 2 * time.Second, PingTimeout: 2 * time.Second},
		}},
		errc:   make(chan error, 2),
		stopc:  make(chan struct{}),
		donec:  make(chan struct{}),
		closed: make(chan struct{}),
	}
	g.table.Store(&table{services: map[string]*resolved{}, methods: map[string]*method{}, failed: map[string]bool{}})
	defer func() {
		if err != nil {
			g.closeAll()
		}
	}()
	if g.schemas, err = newSchemaSource(g.backendHTTP, cfg.PeerToken); err != nil {
		return nil, err
	}
	cluster, ok := g.schemas.compiled(clusterv1connect.ClusterServiceName)
	if !ok {
		return nil, fmt.Errorf("gateway: %s is not compiled in", clusterv1connect.ClusterServiceName)
	}
	g.own = []*resolved{cluster}
	if g.etcd, err = discovery.Connect(context.Background(), cfg.Etcd, cfg.EtcdTLS); err != nil {
		return nil, err
	}
	g.watcher = discovery.NewWatcher(g.etcd, cfg.Logger)
	reg := cfg.Registry
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := g.setupPolicies(reg); err != nil {
		return nil, err
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flux_gateway_services", Help: "Services the gateway serves.",
	}, func() float64 { return float64(len(g.table.Load().services)) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flux_gateway_backend_instances", Help: "Live instances of the services the gateway serves.",
	}, func() float64 { return float64(g.liveInstances()) }))
	serverMetrics, err := telemetry.NewRPCMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register rpc metrics: %w", err)
	}
	clientMetrics, err := telemetry.NewRPCClientMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("register rpc client metrics: %w", err)
	}
	g.handlerOptions = []connect.HandlerOption{connect.WithInterceptors(append(slices.Clone(cfg.Interceptors), serverMetrics, auth.Interceptor(cfg.Auth, cfg.AuthReflection))...)}
	// Proxied calls carry the caller's token, and only it: the node checks
	// the caller again. The peer token goes on the gateway's own calls
	// (statistics, schemas), never on a caller's.
	g.clientOptions = []connect.ClientOption{connect.WithInterceptors(append(slices.Clone(cfg.ClientInterceptors), clientMetrics)...)}
	g.ownCallOptions = append(slices.Clone(g.clientOptions), connect.WithInterceptors(auth.Bearer(cfg.PeerToken)))

	if g.api, err = rpcserver.Listen(cfg.Listen, g.apiHandler(), rpcserver.Options{TLS: cfg.TLS, Limits: cfg.HTTP, Logger: cfg.Logger}); err != nil {
		return nil, fmt.Errorf("api listener: %w", err)
	}
	if g.admin, err = rpcserver.Listen(cfg.AdminListen, g.adminHandler(), rpcserver.Options{TLS: cfg.TLS, Logger: cfg.Logger}); err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	return g, nil
}

// apiHandler routes the gateway's own services (reflection for everything
// it serves, health, ClusterService), the web console and, for any other
// path, the proxied methods.
func (g *Gateway) apiHandler() http.Handler {
	mux := http.NewServeMux()
	reflector := grpcreflect.NewReflector(
		grpcreflect.NamerFunc(g.serviceNames),
		grpcreflect.WithDescriptorResolver(unionResolver{services: g.resolvedServices}),
	)
	// The gateway's own services get the limits of the proxied methods:
	// each message at most MaxMessageBytes, and the body of a unary call
	// capped before it is read. Reflection is a bidi stream, so only its
	// messages are.
	own := append([]connect.HandlerOption{connect.WithReadMaxBytes(g.cfg.MaxMessageBytes)}, g.handlerOptions...)
	unaryBody := int64(g.cfg.MaxMessageBytes) + bodyOverhead
	mux.Handle(grpcreflect.NewHandlerV1(reflector, own...))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, own...))
	mux.Handle(limitBodies(unaryBody)(grpchealth.NewHandler(checker{g}, own...)))
	mux.Handle(limitBodies(unaryBody)(clusterv1connect.NewClusterServiceHandler(newClusterService(g), own...)))
	mux.Handle("/", http.HandlerFunc(g.serveProxied))
	var h http.Handler = mux
	h = g.limiter.Handler(h)
	h = rpcserver.CORS(h, g.cfg.CORSOrigins)
	if g.cfg.Console != nil {
		outer := http.NewServeMux()
		outer.Handle("/ui/", http.StripPrefix("/ui", g.cfg.Console))
		outer.HandleFunc("/ui", redirectToConsole)
		outer.Handle("/", h)
		h = outer
	}
	for i := len(g.cfg.Middleware) - 1; i >= 0; i-- {
		h = g.cfg.Middleware[i](h)
	}
	return h
}

// limitBodies caps the request bodies of a service handler (its path and
// handler, as the generated constructors return them) at maxBytes. Only for
// services without client streams, whose bodies are one message each.
func limitBodies(maxBytes int64) func(string, http.Handler) (string, http.Handler) {
	return func(path string, h http.Handler) (string, http.Handler) {
		return path, http.MaxBytesHandler(h, maxBytes)
	}
}

// redirectToConsole sends /ui to /ui/, keeping the query. The Location is
// relative, so the redirect also holds behind a proxy that serves the
// gateway under a path of its own.
func redirectToConsole(w http.ResponseWriter, r *http.Request) {
	target := "ui/"
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", target)
	w.WriteHeader(http.StatusMovedPermanently)
}

// serveProxied dispatches to the current table. An unknown procedure gets
// 404, which every protocol's clients read as Unimplemented.
func (g *Gateway) serveProxied(w http.ResponseWriter, r *http.Request) {
	m, ok := g.table.Load().methods[r.URL.Path]
	if !ok {
		http.Error(w, fmt.Sprintf("no service serves %s", r.URL.Path), http.StatusNotFound)
		return
	}
	m.handler.ServeHTTP(w, r)
}

// serviceNames are the services the gateway serves, its own included, for
// reflection.
func (g *Gateway) serviceNames() []string {
	names := g.table.Load().names()
	for _, res := range g.own {
		names = append(names, string(res.service.FullName()))
	}
	slices.Sort(names)
	return names
}

func (g *Gateway) resolvedServices() []*resolved {
	t := g.table.Load()
	out := slices.Clone(g.own)
	for _, name := range t.names() {
		out = append(out, t.services[name])
	}
	return out
}

func (g *Gateway) liveInstances() int {
	snap := g.watcher.Snapshot()
	if snap == nil {
		return 0
	}
	n := 0
	for name := range g.table.Load().services {
		n += len(snap.Instances[name])
	}
	return n
}

// checker answers gRPC health for the gateway ("") and for each service it
// serves: SERVING while the service has a live instance. ClusterService,
// which the gateway answers itself, is SERVING once the gateway has read
// the cluster's state from etcd: until then Status can only fail.
type checker struct{ g *Gateway }

func (c checker) Check(_ context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	if c.g.draining.Load() {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	snap := c.g.watcher.Snapshot()
	switch {
	case req.Service == "":
		return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
	case req.Service == clusterv1connect.ClusterServiceName && snap == nil:
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	case req.Service == clusterv1connect.ClusterServiceName:
		return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
	}
	if _, ok := c.g.table.Load().services[req.Service]; !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %s", req.Service))
	}
	if snap == nil || len(snap.Instances[req.Service]) == 0 {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}

func (g *Gateway) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", admin.NewHandler(g.cfg.Registry, g.healthy))
	mux.HandleFunc("GET /breakers", g.serveBreakers)
	return auth.AdminHandler(g.cfg.Auth, mux)
}

func (g *Gateway) healthy() error {
	select {
	case <-g.closed:
		return errors.New("gateway is shut down")
	default:
	}
	if g.draining.Load() {
		return errors.New("gateway is shutting down")
	}
	return nil
}

// Start loads the cluster's state from etcd, builds the table of services,
// registers the gateway and serves both ports. It fails if etcd does not
// answer within ctx (30 s when ctx has no deadline).
func (g *Gateway) Start(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	rpcserver.WarnExposed(g.cfg.Logger, rpcserver.Protection{TLS: g.cfg.TLS != nil, Authenticated: g.cfg.Auth != nil, Insecure: g.cfg.Insecure}, g.api.Addr(), g.admin.Addr())
	g.serve(g.admin)
	if err := g.watcher.Start(ctx); err != nil {
		return fmt.Errorf("watch etcd: %w", err)
	}
	snap, changed := g.watcher.Current()
	g.refresh(ctx, snap)
	g.following.Store(true)
	go g.follow(changed)
	apiAddr, adminAddr, err := rpcserver.Advertise(g.cfg.Advertise, g.api.Addr(), g.admin.Addr())
	if err != nil {
		return err
	}
	inst := discovery.Instance{
		ID: g.cfg.ID, Address: apiAddr, AdminAddress: adminAddr,
		StartedAt: time.Now().UTC().Truncate(time.Second), Version: buildinfo.String(),
		TLS: g.cfg.TLS != nil,
	}
	reg, err := discovery.RegisterGateway(ctx, g.etcd, inst, discovery.WithTTL(g.cfg.LeaseTTL), discovery.WithLogger(g.cfg.Logger))
	if err != nil {
		return fmt.Errorf("register gateway: %w", err)
	}
	g.reg = reg
	g.serve(g.api)
	g.cfg.Logger.Info("gateway serving",
		slog.String("id", g.cfg.ID),
		slog.String("listen", g.api.Addr().String()),
		slog.String("admin_listen", g.admin.Addr().String()),
		slog.Any("services", g.table.Load().names()),
	)
	return nil
}

func (g *Gateway) serve(srv *rpcserver.Server) {
	go func() {
		if err := srv.Serve(); err != nil {
			g.errc <- err
		}
	}()
}

// follow rebuilds the table when the cluster changes, and retries services
// whose schema could not be fetched.
func (g *Gateway) follow(changed <-chan struct{}) {
	defer close(g.donec)
	retry := time.NewTicker(resolveRetry)
	defer retry.Stop()
	for {
		select {
		case <-g.stopc:
			return
		case <-changed:
		case <-retry.C:
			if len(g.table.Load().failed) == 0 {
				continue
			}
		}
		var snap *discovery.Snapshot
		snap, changed = g.watcher.Current()
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-g.stopc:
				cancel()
			case <-ctx.Done():
			}
		}()
		g.refresh(ctx, snap)
		cancel()
	}
}

// refresh makes the table match snap: services with live instances are
// served (their schema fetched once), others dropped.
func (g *Gateway) refresh(ctx context.Context, snap *discovery.Snapshot) {
	g.gateways.Store(int64(len(snap.Gateways)))
	cur := g.table.Load()
	next := &table{services: map[string]*resolved{}, methods: map[string]*method{}, failed: map[string]bool{}}
	changed := false
	for _, name := range served(snap) {
		if res, ok := cur.services[name]; ok {
			next.services[name] = res
			continue
		}
		res, err := g.resolveAny(ctx, name, snap.Live(name))
		if err != nil {
			if !cur.failed[name] {
				g.cfg.Logger.Warn("cannot serve a service: its schema is unknown; retrying", slog.String("service", name), slog.Any("error", err))
			}
			next.failed[name] = true
			continue
		}
		next.services[name] = res
		changed = true
		g.cfg.Logger.Info("serving service", slog.String("service", name), slog.Int("methods", res.service.Methods().Len()))
	}
	for name := range cur.services {
		if _, ok := next.services[name]; !ok {
			changed = true
			g.cfg.Logger.Info("service gone: no live instance left", slog.String("service", name))
		}
	}
	if !changed && len(next.failed) == len(cur.failed) {
		// Only instances changed: keep the handlers.
		next.methods = cur.methods
		g.table.Store(next)
		g.forgetGone(snap)
		return
	}
	for name, res := range next.services {
		if old, ok := cur.services[name]; ok && old == res {
			for p, m := range cur.methods {
				if m.service == name {
					next.methods[p] = m
				}
			}
			continue
		}
		methods := res.service.Methods()
		for i := range methods.Len() {
			m := g.newMethod(methods.Get(i))
			next.methods[m.procedure] = m
		}
	}
	g.table.Store(next)
	g.forgetGone(snap)
}

// served returns the services to proxy: those with a live instance, except
// the ones the gateway must not proxy (notProxied), and Flux-KV's own while
// the cluster has members, so that its calls answer Unavailable (retry
// later) rather than Unimplemented while no node is live.
func served(snap *discovery.Snapshot) []string {
	names := slices.DeleteFunc(snap.Services(), func(name string) bool { return notProxied[name] })
	if len(snap.RingMembers()) > 0 && !slices.Contains(names, kvv1connect.KVServiceName) {
		names = append(names, kvv1connect.KVServiceName)
	}
	return names
}

// resolveAny returns a service's schema: compiled in, or fetched from the
// first instance that answers.
func (g *Gateway) resolveAny(ctx context.Context, service string, live []discovery.Instance) (*resolved, error) {
	if res, ok := g.schemas.compiled(service); ok {
		return res, nil
	}
	if len(live) == 0 {
		return nil, fmt.Errorf("no live instance of %s to fetch its schema from", service)
	}
	var errs []error
	for _, inst := range live {
		rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
		url, err := inst.DialURL(g.cfg.PeerTLS != nil)
		if err != nil {
			cancel()
			errs = append(errs, err)
			continue
		}
		res, err := g.schemas.resolve(rctx, service, url)
		cancel()
		if err == nil {
			return res, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// forgetGone drops breakers and clients of instances no longer live.
func (g *Gateway) forgetGone(snap *discovery.Snapshot) {
	liveURL := map[string]bool{}
	liveBreaker := map[string]bool{}
	for svc, insts := range snap.Instances {
		for id, inst := range insts {
			liveURL[inst.URL()] = true
			liveBreaker[svc+"/"+id] = true
		}
	}
	for name := range g.breakers.States() {
		if !liveBreaker[name] {
			g.breakers.Forget(name)
		}
	}
	g.clients.Range(func(k, _ any) bool {
		key := k.(string)
		if i := lastAt(key); i >= 0 && !liveURL[key[i+1:]] {
			g.clients.Delete(k)
		}
		return true
	})
}

func lastAt(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '@' {
			return i
		}
	}
	return -1
}

func (g *Gateway) withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, g.cfg.DefaultTimeout)
}

// APIURL is the base URL of the API port.
func (g *Gateway) APIURL() string { return g.api.URL() }

// AdminURL is the base URL of the admin port.
func (g *Gateway) AdminURL() string { return g.admin.URL() }

// Wait blocks until ctx is done or a listener fails.
func (g *Gateway) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-g.errc:
		return err
	}
}

// Shutdown deregisters the gateway, lets calls in flight finish (until ctx
// ends or the shutdown timeout passes) and releases everything. It is
// idempotent.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.shutdownOnce.Do(func() {
		defer close(g.closed)
		g.draining.Store(true)
		ctx, cancel := context.WithTimeout(ctx, g.cfg.ShutdownTimeout)
		defer cancel()
		var errs []error
		if g.reg != nil {
			dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
			if err := g.reg.Close(dctx); err != nil {
				errs = append(errs, err)
			}
			dcancel()
		}
		if err := g.api.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
		g.admin.Close()
		g.closeAll()
		g.shutdownErr = errors.Join(errs...)
		g.cfg.Logger.Info("gateway stopped", slog.String("id", g.cfg.ID))
	})
	return g.shutdownErr
}

// Done is closed when Shutdown has finished.
func (g *Gateway) Done() <-chan struct{} { return g.closed }

// closeAll releases what New and Start opened.
func (g *Gateway) closeAll() {
	select {
	case <-g.stopc:
	default:
		close(g.stopc)
	}
	if g.following.Load() {
		<-g.donec
	}
	if g.watcher != nil {
		g.watcher.Close()
	}
	if g.api != nil {
		g.api.Close()
	}
	if g.admin != nil {
		g.admin.Close()
	}
	g.backendHTTP.CloseIdleConnections()
	if g.etcd != nil {
		_ = g.etcd.Close()
	}
}
