package rpcpolicy

import (
	"container/list"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"
)

// defaultMaxClients bounds the per-client buckets when LimiterConfig.MaxClients
// is 0: a bucket is about 200 bytes, so the map stays within a few megabytes.
const defaultMaxClients = 10_000

// LimiterConfig configures a Limiter. A zero rate turns that limit off.
type LimiterConfig struct {
	GlobalRate      float64    // requests per second for the whole fleet of gateways; 0 = off
	GlobalBurst     int        // fleet-wide bucket size, shared like the rate; 0 = one second's worth of GlobalRate
	ClientRate      float64    // requests per second for each client; 0 = off
	ClientBurst     int        // each client's bucket size; 0 = one second's worth of ClientRate
	ClientKeyHeader string     // request header naming the client (an API key); when absent, the peer IP
	Peers           func() int // live gateways sharing GlobalRate; nil = 1. Called on every request: keep it cheap
	MaxClients      int        // per-client buckets kept; the least recently used go first; 0 = 10000
}

// Limiter refuses requests over a global and a per-client token-bucket rate
// with ResourceExhausted, in the wire format of the request's protocol and
// with a retry hint. Create it with NewLimiter; it is safe for concurrent use
// and holds no goroutines.
type Limiter struct {
	global      *rate.Limiter // nil when the global limit is off
	globalRate  float64
	globalBurst int
	peers       func() int
	shareMu     sync.Mutex   // serialises re-sharing so limit and burst change together
	sharedBy    atomic.Int64 // the number of gateways the global limiter is sized for

	clients   *clientBuckets // nil when the per-client limit is off
	keyHeader string
	seed      maphash.Seed

	errw    *connect.ErrorWriter
	refused *prometheus.CounterVec
}

// NewLimiter checks cfg and returns a Limiter whose metrics are registered on
// reg (none when reg is nil). It fails on a negative or non-finite rate, or if
// reg already holds metrics of the same names.
func NewLimiter(cfg LimiterConfig, reg prometheus.Registerer) (*Limiter, error) {
	for _, r := range []float64{cfg.GlobalRate, cfg.ClientRate} {
		if r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
			return nil, fmt.Errorf("rate limit: rate %v is not a finite number >= 0", r)
		}
	}
	if cfg.GlobalBurst < 0 || cfg.ClientBurst < 0 || cfg.MaxClients < 0 {
		return nil, errors.New("rate limit: burst and client bound must be >= 0")
	}
	l := &Limiter{
		globalRate:  cfg.GlobalRate,
		globalBurst: burstOrDefault(cfg.GlobalBurst, cfg.GlobalRate),
		peers:       cfg.Peers,
		keyHeader:   cfg.ClientKeyHeader,
		seed:        maphash.MakeSeed(),
		errw:        connect.NewErrorWriter(),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flux_gateway_ratelimit_refused_total",
			Help: "Requests refused with ResourceExhausted, by the limit that refused them (global or client).",
		}, []string{"reason"}),
	}
	if cfg.GlobalRate > 0 {
		n := l.livePeers()
		l.global = rate.NewLimiter(shareOf(l.globalRate, l.globalBurst, n))
		l.sharedBy.Store(int64(n))
	}
	if cfg.ClientRate > 0 {
		maxClients := cfg.MaxClients
		if maxClients == 0 {
			maxClients = defaultMaxClients
		}
		l.clients = newClientBuckets(rate.Limit(cfg.ClientRate), burstOrDefault(cfg.ClientBurst, cfg.ClientRate), maxClients)
	}
	// Both reasons exist from the start so that a dashboard shows 0, not no data.
	l.refused.WithLabelValues(reasonGlobal)
	l.refused.WithLabelValues(reasonClient)
	share := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flux_gateway_ratelimit_global_share",
		Help: "Requests per second this gateway admits under the global limit (its share of the fleet's rate); 0 when off.",
	}, func() float64 {
		if l.global == nil {
			return 0
		}
		l.reshare() // so that a change of fleet shows even while no request comes
		return float64(l.global.Limit())
	})
	tracked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "flux_gateway_ratelimit_clients",
		Help: "Clients with a token bucket held in memory by the per-client limit.",
	}, func() float64 { return float64(l.clients.len()) })
	if reg != nil {
		for _, c := range []prometheus.Collector{l.refused, share, tracked} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("rate limit: register metrics: %w", err)
			}
		}
	}
	return l, nil
}

const (
	reasonGlobal = "global"
	reasonClient = "client"
)

// Handler returns next behind the limits. It answers refused requests itself,
// before anything reads the body, so an overloaded gateway spends no decoding
// on them. CORS preflights (OPTIONS) always pass; put the CORS middleware
// outside this one so that refusals carry CORS headers too.
func (l *Limiter) Handler(next http.Handler) http.Handler {
	if l.global == nil && l.clients == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			next.ServeHTTP(w, r)
			return
		}
		if reason, wait, ok := l.allow(r, time.Now()); !ok {
			l.refuse(w, r, reason, wait)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// allow takes a token from the client's bucket, then from the global one. The
// client goes first so that a client over its own limit cannot spend the
// tokens every other client shares; a call the global limit then refuses has
// spent its client's token, which only slows a client that is being refused
// anyway.
func (l *Limiter) allow(r *http.Request, now time.Time) (reason string, wait time.Duration, ok bool) {
	if l.clients != nil {
		lim := l.clients.get(l.clientKey(r))
		if !lim.AllowN(now, 1) {
			return reasonClient, waitForToken(lim, now), false
		}
	}
	if l.global != nil {
		l.reshare()
		if !l.global.AllowN(now, 1) {
			return reasonGlobal, waitForToken(l.global, now), false
		}
	}
	return "", 0, true
}

// reshare resizes the global bucket to this gateway's share when the number of
// live gateways has changed since the last request. The common case is one
// atomic load.
func (l *Limiter) reshare() {
	n := l.livePeers()
	if int64(n) == l.sharedBy.Load() {
		return
	}
	l.shareMu.Lock()
	defer l.shareMu.Unlock()
	if int64(n) == l.sharedBy.Load() {
		return
	}
	limit, burst := shareOf(l.globalRate, l.globalBurst, n)
	now := time.Now()
	l.global.SetLimitAt(now, limit)
	l.global.SetBurstAt(now, burst)
	l.sharedBy.Store(int64(n))
}

func (l *Limiter) livePeers() int {
	if l.peers == nil {
		return 1
	}
	// A gateway always counts itself, even before its own registration shows up.
	return max(1, l.peers())
}

// clientKey identifies the caller by the API-key header when present, else by
// peer IP. The key is hashed so that raw API keys never sit in the bucket map,
// where a heap dump or a debugger could show them; the per-process seed keeps
// clients from choosing keys that collide.
func (l *Limiter) clientKey(r *http.Request) clientKey {
	if l.keyHeader != "" {
		if v := r.Header.Get(l.keyHeader); v != "" {
			return clientKey{apiKey: true, hash: maphash.String(l.seed, v)}
		}
	}
	// Only the address is trusted: X-Forwarded-For is set by the client unless
	// a proxy in front strips it, so it would let anyone pick their bucket.
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return clientKey{hash: maphash.String(l.seed, host)}
}

// refuse answers with ResourceExhausted in the request's protocol, as
// connect.ErrorWriter does for Connect handlers: a Connect unary call gets
// HTTP 429 and a JSON error; gRPC and gRPC-Web get HTTP 200 with grpc-status 8,
// since their clients read any other HTTP status as Unavailable (429 maps to
// Unavailable in gRPC's HTTP mapping), which they would retry at once.
func (l *Limiter) refuse(w http.ResponseWriter, r *http.Request, reason string, wait time.Duration) {
	l.refused.WithLabelValues(reason).Inc()
	err := connect.NewError(connect.CodeResourceExhausted,
		fmt.Errorf("%s rate limit exceeded, retry after %v", reason, wait))
	if detail, detailErr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)}); detailErr == nil {
		err.AddDetail(detail)
	}
	// Retry-After counts whole seconds; rounding down would invite an early retry.
	secs := int64(math.Ceil(wait.Seconds()))
	w.Header().Set("Retry-After", strconv.FormatInt(max(1, secs), 10))
	// The client may be gone already; there is no one left to tell.
	_ = l.errw.Write(w, r, err)
}

// waitForToken is how long until lim holds a whole token again, at least a
// millisecond so that the hint never says "now".
func waitForToken(lim *rate.Limiter, now time.Time) time.Duration {
	missing := 1 - lim.TokensAt(now)
	limit := float64(lim.Limit())
	if missing <= 0 || limit <= 0 {
		return time.Millisecond
	}
	wait := time.Duration(missing / limit * float64(time.Second))
	return max(time.Millisecond, wait.Round(time.Millisecond))
}

// shareOf is one gateway's part of the fleet's rate and burst when n gateways
// share them. The burst stays at least 1, or the bucket would refuse everything.
func shareOf(fleetRate float64, fleetBurst, n int) (rate.Limit, int) {
	return rate.Limit(fleetRate / float64(n)), max(1, int(math.Ceil(float64(fleetBurst)/float64(n))))
}

func burstOrDefault(burst int, perSecond float64) int {
	if burst > 0 {
		return burst
	}
	return max(1, int(math.Ceil(perSecond)))
}

type clientKey struct {
	apiKey bool // set when hash is of an API key rather than an address, so the two never share a bucket
	hash   uint64
}

// clientBuckets holds one token bucket per client, at most max of them. When
// full, it drops the least recently used bucket: the client that has been idle
// longest, whose bucket has most likely refilled and so loses nothing by
// starting afresh.
type clientBuckets struct {
	limit rate.Limit
	burst int
	max   int

	mu    sync.Mutex
	byKey map[clientKey]*list.Element // values are *clientBucket
	lru   *list.List                  // most recently used at the front
}

type clientBucket struct {
	key clientKey
	lim *rate.Limiter
}

func newClientBuckets(limit rate.Limit, burst, maxClients int) *clientBuckets {
	return &clientBuckets{
		limit: limit,
		burst: burst,
		max:   maxClients,
		byKey: make(map[clientKey]*list.Element),
		lru:   list.New(),
	}
}

func (c *clientBuckets) get(key clientKey) *rate.Limiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*clientBucket).lim
	}
	for c.lru.Len() >= c.max {
		oldest := c.lru.Back()
		delete(c.byKey, oldest.Value.(*clientBucket).key)
		c.lru.Remove(oldest)
	}
	b := &clientBucket{key: key, lim: rate.NewLimiter(c.limit, c.burst)}
	c.byKey[key] = c.lru.PushFront(b)
	return b.lim
}

func (c *clientBuckets) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
