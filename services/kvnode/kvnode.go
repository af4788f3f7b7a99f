// Package kvnode is the Flux-KV node: it serves flux.kv.v1.KVService from an
// in-memory store on one h2c port (gRPC, gRPC-Web and Connect), with
// flux.cluster.v1.NodeService (the node's statistics),
// flux.cluster.v1.HandoffService (keys moving between nodes), gRPC
// reflection and health on the same port, and operator endpoints (/healthz,
// /metrics, /debug/pprof/) on a separate admin port.
package kvnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/cdc"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/discovery"
	"github.com/fluxkv/fluxkv/platform/rpcserver"
	"github.com/fluxkv/fluxkv/platform/schema"
	"github.com/fluxkv/fluxkv/platform/store"
	"github.com/fluxkv/fluxkv/platform/telemetry"
)

// Defaults for Config fields left at their zero value.
const (
	DefaultListen          = "127.0.0.1:7701"
	DefaultAdminListen     = "127.0.0.1:9701"
	DefaultDataDir         = "./flux-data"
	DefaultMaxValueBytes   = 1 << 20
	DefaultShutdownTimeout = 10 * time.Second
	DefaultJoinTimeout     = 30 * time.Second

	// deregisterTimeout bounds revoking the node's lease at shutdown; when
	// etcd does not answer, the lease expires after its TTL instead.
	deregisterTimeout = 2 * time.Second

	DefaultRewriteMinBytes      = 64 << 20
	DefaultRewriteGrowthPercent = 100

	// minMessageBytes is the smallest cap on one API message: gRPC's
	// customary 4 MiB, so a Batch of small values is never refused for size.
	minMessageBytes = 4 << 20
	// messageOverhead is room for the key and framing around a value of the
	// maximum size.
	messageOverhead = 64 << 10
	// compressMinBytes is the smallest response the node compresses when a
	// client accepts compression.
	compressMinBytes = 4 << 10
)

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Config configures a Node. Zero fields take the defaults above; NodeID
// defaults to the host name.
type Config struct {
	Listen          string           // API address (host:port); port 0 picks a free port
	Advertise       string           // API address peers and clients dial (host:port); default: Listen, with the host name for 0.0.0.0
	AdminListen     string           // admin address; keep it on loopback or a private network
	DataDir         string           // directory for the node's files; created if missing
	NodeID          string           // stable identity of the node: letters, digits, '.', '_', '-'
	MaxValueBytes   int              // largest value a Put accepts
	Limits          Limits           // bounds on keys, batches, Pipeline streams and each client's call rate
	CORSOrigins     []string         // browser origins allowed to call the API; nil means "*"
	ShutdownTimeout time.Duration    // how long Shutdown lets in-flight calls finish
	Logger          *slog.Logger     // nil means slog.Default()
	Clock           func() time.Time // time source for TTLs; nil means time.Now (tests inject their own)

	AppendOnly           bool             // keep an append-only file in DataDir/aof; false runs purely in memory
	AppendFsync          changelog.Policy // when the log is fsynced (default everysec)
	RewriteMinBytes      int64            // rewrite the log once it is at least this long (default 64 MiB)
	RewriteGrowthPercent int              // ... and has grown this much since the last rewrite (default 100; -1 disables)

	Etcd     []string      // etcd endpoints of the cluster to join; empty runs a standalone node
	LeaseTTL time.Duration // how long the node stays live in etcd after it stops renewing (default 5s)
	// Join lets a new member join a cluster that holds data: the keys that
	// move to it are copied from their owners while the cluster serves, and
	// the ring flips to include it once it holds them.
	Join bool
	// AcceptKeyMovement lets a new member join a cluster that holds data at
	// once, without copying: the keys it takes over are lost (their old
	// owners drop them). For tests and disposable data; prefer Join.
	AcceptKeyMovement bool

	AMQPURL      string        // RabbitMQ URL the CDC relay publishes to (amqps:// for TLS); empty turns CDC off
	AMQPTLS      *tls.Config   // configures amqps:// (nil: the system's roots, no client certificate)
	CDCQueue     string        // durable queue to declare and bind to the flux.cdc exchange; empty declares none
	CDCMaxLag    int64         // log loudly when the relay is this many revisions behind (0: no bound)
	CDCMaxLagAge time.Duration // ... or its oldest unconfirmed event is this old (0: no bound)

	// Auth, when set, is the token file every call to the node's services
	// (not health, not reflection) must present a token of; PeerToken is
	// the token the node sends on its calls to peers (forwarded requests,
	// moving keys: it needs the admin scope).
	Auth      *auth.File
	PeerToken string
	// AuthReflection makes server reflection need a token (read) too.
	AuthReflection bool
	// Insecure acknowledges listeners reachable from other hosts without
	// TLS; without it the node logs a loud warning for each.
	Insecure bool

	// TLS, when set, makes both ports serve TLS only (see
	// rpcserver.Options.TLS), and the node registers as serving TLS, so
	// peers, gateways and SDKs dial it with https://. PeerTLS configures
	// the node's calls to peers that serve TLS (nil: the system's roots,
	// no client certificate); EtcdTLS its connection to etcd.
	TLS, PeerTLS, EtcdTLS *tls.Config
	// HTTP bounds what each client connection may hold of the API port.
	HTTP rpcserver.Limits

	// Interceptors run on every API call before the node's own (tracing and
	// the access log go here); ClientInterceptors on calls to peers.
	Interceptors       []connect.Interceptor
	ClientInterceptors []connect.Interceptor
	// Middleware wraps the API port's handler, outermost first.
	Middleware []func(http.Handler) http.Handler
	// Registry receives the node's metrics; nil creates one.
	Registry *prometheus.Registry
}

func (c *Config) setDefaults() error {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.AdminListen == "" {
		c.AdminListen = DefaultAdminListen
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.NodeID == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("default node id from host name: %w", err)
		}
		c.NodeID = host
	}
	if !nodeIDPattern.MatchString(c.NodeID) {
		return fmt.Errorf("node id %q: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", c.NodeID)
	}
	if c.MaxValueBytes == 0 {
		c.MaxValueBytes = DefaultMaxValueBytes
	}
	if c.MaxValueBytes < 0 {
		return fmt.Errorf("max value bytes %d: must be positive", c.MaxValueBytes)
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
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = discovery.DefaultTTL
	}
	if c.RewriteMinBytes == 0 {
		c.RewriteMinBytes = DefaultRewriteMinBytes
	}
	if c.RewriteGrowthPercent == 0 {
		c.RewriteGrowthPercent = DefaultRewriteGrowthPercent
	}
	return c.Limits.setDefaults()
}

// Node is a running Flux-KV node. Create it with New, then Start it; stop it
// with Shutdown.
type Node struct {
	cfg    Config
	store  *store.Store
	log    *changelog.Log   // nil when the node runs purely in memory
	events changelog.Events // what Watch and the CDC relay read: log, or an in-memory tail
	tail   *changelog.Tail  // the in-memory tail when there is no log
	relay  *cdc.Relay       // nil when CDC is off
	// relaySrc is the relay's reader of events.
	relaySrc *eventSource
	registry *prometheus.Registry
	router   *router // shared with the handler; joined to a cluster by Start
	// mover copies keys moving to this node and drops those moving away.
	mover          *mover
	moverDone      chan struct{}
	handoffMetrics *handoffMetrics
	health         *grpchealth.StaticChecker
	api            *rpcserver.Server
	admin          *rpcserver.Server

	errc         chan error // serve errors from either listener
	apiServing   atomic.Bool
	shutdownOnce sync.Once
	shutdownErr  error
	donec        chan struct{}
}

// New validates cfg, creates the data directory and the store, and binds both
// listeners, so the addresses are known before Start. On error nothing is
// left open.
func New(cfg Config) (_ *Node, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	n := &Node{
		cfg:    cfg,
		router: &router{self: cfg.NodeID, log: cfg.Logger},
		errc:   make(chan error, 2),
		donec:  make(chan struct{}),
	}
	defer func() {
		if err != nil {
			n.closeAll()
		}
	}()

	registry := cfg.Registry
	if registry == nil {
		registry = prometheus.NewRegistry()
	}
	n.registry = registry
	n.handoffMetrics = newHandoffMetrics(registry)
	if err := n.openStore(registry); err != nil {
		return nil, err
	}
	n.mover = newMover(n)
	if err := n.newRelay(); err != nil {
		return nil, fmt.Errorf("cdc relay: %w", err)
	}
	registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "flux_store_keys", Help: "Keys held by the node, including expired keys not yet removed.",
		}, func() float64 { return float64(n.store.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "flux_store_revision", Help: "Last revision the node assigned.",
		}, func() float64 { return float64(n.store.Revision()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "flux_handoff_lag_revisions",
			Help: "Revisions of its sources that this node has yet to apply while keys move to it, summed over the sources, as of their last reports.",
		}, func() float64 {
			var lag int64
			for _, h := range n.mover.handoffs() {
				lag += h.GetLagRevisions()
			}
			return float64(lag)
		}),
	)
	rpcMetrics, err := telemetry.NewRPCMetrics(registry)
	if err != nil {
		return nil, fmt.Errorf("register rpc metrics: %w", err)
	}

	apiHandler, err := n.apiHandler(rpcMetrics)
	if err != nil {
		return nil, err
	}
	if n.api, err = rpcserver.Listen(cfg.Listen, apiHandler, rpcserver.Options{TLS: cfg.TLS, Limits: cfg.HTTP, Logger: cfg.Logger}); err != nil {
		return nil, fmt.Errorf("api listener: %w", err)
	}
	adminHandler := n.adminHandler(registry)
	if n.admin, err = rpcserver.Listen(cfg.AdminListen, adminHandler, rpcserver.Options{TLS: cfg.TLS, Logger: cfg.Logger}); err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	return n, nil
}

// apiHandler builds the public port: KVService, NodeService,
// HandoffService, reflection and health, with validation, size limits and
// CORS.
func (n *Node) apiHandler(rpcMetrics *telemetry.RPCMetrics) (http.Handler, error) {
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("create validator: %w", err)
	}
	maxMessage := max(minMessageBytes, n.cfg.MaxValueBytes+messageOverhead)
	serviceDesc := kvv1.File_flux_kv_v1_kv_proto.Services().ByName("KVService")
	validation := newRequestValidation(validator, n.cfg.Limits, kvv1connect.KVServicePipelineProcedure)
	n.health = grpchealth.NewStaticChecker(kvv1connect.KVServiceName)
	// Not serving until Start has joined the cluster.
	n.health.SetStatus(kvv1connect.KVServiceName, grpchealth.StatusNotServing)

	interceptors := connect.WithInterceptors(append(slices.Clone(n.cfg.Interceptors), rpcMetrics, auth.Interceptor(n.cfg.Auth, n.cfg.AuthReflection), validation)...)
	mux := http.NewServeMux()
	mux.Handle(kvv1connect.NewKVServiceHandler(
		newHandler(n.store, validator, n.cfg.MaxValueBytes, n.cfg.Limits, n.cfg.Clock, n.durability(), n.events, n.router),
		interceptors,
		connect.WithReadMaxBytes(maxMessage),
		// Compressing the small messages most calls carry costs more CPU than
		// it saves bytes (gzip set-up dominated profiles of Put).
		connect.WithCompressMinBytes(compressMinBytes),
	))
	// NodeService is served here but not registered in etcd: it describes
	// this node only, and whoever wants it dials the node's API address,
	// which the node's KVService registration carries.
	mux.Handle(clusterv1connect.NewNodeServiceHandler(newNodeService(n), interceptors))
	// HandoffService likewise: nodes call it on each other while keys move,
	// and a node answers it for itself only.
	mux.Handle(clusterv1connect.NewHandoffServiceHandler(newHandoffService(n), interceptors,
		connect.WithCompressMinBytes(compressMinBytes)))
	reflector, err := schema.NewReflector(kvv1connect.KVServiceName, clusterv1connect.NodeServiceName,
		clusterv1connect.HandoffServiceName, grpchealth.HealthV1ServiceName)
	if err != nil {
		return nil, err
	}
	// Reflection is open unless AuthReflection asks for a token.
	guard := connect.WithInterceptors(auth.Interceptor(n.cfg.Auth, n.cfg.AuthReflection))
	mux.Handle(grpcreflect.NewHandlerV1(reflector, guard))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, guard))
	mux.Handle(grpchealth.NewHandler(n.health))

	var h http.Handler = mux
	h = rpcserver.CoalesceFlushes(h, kvv1connect.KVServicePipelineProcedure)
	h = rpcserver.LimitRequestBodies(h, int64(maxMessage)+messageOverhead, serviceDesc)
	if h, err = n.cfg.rateLimited(h); err != nil {
		return nil, err
	}
	h = rpcserver.CORS(h, n.cfg.CORSOrigins)
	for i := len(n.cfg.Middleware) - 1; i >= 0; i-- {
		h = n.cfg.Middleware[i](h)
	}
	return h, nil
}

// Start serves the admin port and, when etcd endpoints are configured,
// joins the cluster: it records the node as a member, starts routing keys
// by the ring and registers the node as live. Only then does the API port
// serve, so no request is answered by a node that does not yet know where
// keys belong (connections made meanwhile wait in the listen backlog).
// Joining fails if it does not succeed within ctx, or within
// DefaultJoinTimeout when ctx has no deadline. Errors that stop a listener
// later are reported by Wait.
func (n *Node) Start(ctx context.Context) error {
	rpcserver.WarnExposed(n.cfg.Logger, rpcserver.Protection{TLS: n.cfg.TLS != nil, Authenticated: n.cfg.Auth != nil, Insecure: n.cfg.Insecure}, n.api.Addr(), n.admin.Addr())
	n.store.Start()
	if n.log != nil {
		n.log.Start()
	}
	if n.relay != nil {
		n.relay.Start()
	}
	n.serve(n.admin)
	if len(n.cfg.Etcd) > 0 {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, DefaultJoinTimeout)
			defer cancel()
		}
		apiAddr, adminAddr, err := rpcserver.Advertise(n.cfg.Advertise, n.api.Addr(), n.admin.Addr())
		if err != nil {
			return err
		}
		c, err := join(ctx, n.cfg, apiAddr, adminAddr, n.store.Len() > 0)
		if err != nil {
			return fmt.Errorf("join cluster: %w", err)
		}
		n.router.join(c)
		n.moverDone = make(chan struct{})
		go func() {
			defer close(n.moverDone)
			n.mover.run(c)
		}()
	}
	n.serve(n.api)
	n.apiServing.Store(true)
	n.health.SetStatus(kvv1connect.KVServiceName, grpchealth.StatusServing)
	n.cfg.Logger.Info("node serving",
		slog.String("node_id", n.cfg.NodeID),
		slog.String("listen", n.api.Addr().String()),
		slog.String("admin_listen", n.admin.Addr().String()),
		slog.String("data_dir", n.cfg.DataDir),
		slog.Bool("clustered", len(n.cfg.Etcd) > 0),
	)
	return nil
}

func (n *Node) serve(srv *rpcserver.Server) {
	go func() {
		if err := srv.Serve(); err != nil {
			n.errc <- err
		}
	}()
}

// APIURL is the base URL of the API port.
func (n *Node) APIURL() string { return n.api.URL() }

// AdminURL is the base URL of the admin port.
func (n *Node) AdminURL() string { return n.admin.URL() }

// Wait blocks until ctx is done or a listener fails, and returns the failure
// (nil when ctx ended). It does not stop the node: call Shutdown after it.
func (n *Node) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-n.errc:
		return err
	}
}

// Shutdown stops the node gracefully: health turns NOT_SERVING, the API port
// stops accepting calls and lets in-flight ones finish until ctx ends or the
// configured shutdown timeout passes (then open streams are cut), and the
// store is closed last. It is idempotent; later calls return the first
// result.
func (n *Node) Shutdown(ctx context.Context) error {
	n.shutdownOnce.Do(func() {
		defer close(n.donec)
		n.health.SetStatus(kvv1connect.KVServiceName, grpchealth.StatusNotServing)
		ctx, cancel := context.WithTimeout(ctx, n.cfg.ShutdownTimeout)
		defer cancel()
		var errs []error
		// Deregister first, so peers, gateways and SDKs stop sending requests
		// here, but keep routing while calls drain: a call in flight for a
		// key another node owns still reaches it.
		dctx, dcancel := context.WithTimeout(ctx, deregisterTimeout)
		if err := n.router.deregister(dctx); err != nil {
			errs = append(errs, fmt.Errorf("leave cluster: %w", err))
		}
		dcancel()
		// A move of keys to this node stops while etcd is still reachable,
		// so its lease is revoked and its sources take writes again at once.
		n.mover.stop()
		if n.moverDone != nil {
			<-n.moverDone
		}
		if !n.apiServing.Load() {
			// Start failed before serving: Shutdown of a server that never
			// served would leave the listener open.
			n.api.Close()
		} else if err := n.api.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
		if err := n.router.leave(); err != nil {
			errs = append(errs, fmt.Errorf("leave cluster: %w", err))
		}
		// The admin port goes last so /healthz and /metrics stay readable while
		// calls drain.
		n.admin.Close()
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
		// The relay goes after the store, so it sees the last change, and
		// before the log it reads.
		if err := n.closeRelay(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close cdc relay: %w", err))
		}
		if n.tail != nil {
			n.tail.Close()
		}
		// Last, so every change the store reported is written and fsynced,
		// whatever the policy.
		if n.log != nil {
			if err := n.log.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close append-only file: %w", err))
			}
		}
		n.shutdownErr = errors.Join(errs...)
		n.cfg.Logger.Info("node stopped", slog.String("node_id", n.cfg.NodeID))
	})
	return n.shutdownErr
}

// Done is closed when Shutdown has finished.
func (n *Node) Done() <-chan struct{} { return n.donec }

func (n *Node) healthy() error {
	select {
	case <-n.donec:
		return errors.New("node is shut down")
	default:
	}
	if resp, err := n.health.Check(context.Background(), &grpchealth.CheckRequest{Service: kvv1connect.KVServiceName}); err != nil || resp.Status != grpchealth.StatusServing {
		return errors.New("node is not serving")
	}
	return nil
}

// closeAll releases whatever New managed to open.
func (n *Node) closeAll() {
	if n.api != nil {
		n.api.Close()
	}
	if n.admin != nil {
		n.admin.Close()
	}
	if n.store != nil {
		_ = n.store.Close()
	}
	if n.relay != nil {
		_ = n.closeRelay(context.Background())
	}
	if n.tail != nil {
		n.tail.Close()
	}
	if n.log != nil {
		_ = n.log.Close()
	}
}
