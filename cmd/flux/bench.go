package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/fluxkv/fluxkv/internal/bench"
)

func benchCommand() *command {
	fs := newFlagSet("bench")
	var (
		cf          = clientFlags{protocol: "grpc"}
		cfg         = bench.Config{ReadRatio: 0.9, Batch: 16, Depth: 16, Keys: 100000, KeySize: 16, ValueSize: 64, ZipfS: 1.1, Concurrency: 64, Duration: 10 * time.Second, Warmup: 2 * time.Second, Preload: true}
		workload    = string(bench.Get)
		dist        = string(bench.Uniform)
		connections = 1
		rf          redisFlags
	)
	fs.StringVar(&workload, "workload", workload, "`kind` of requests: get, put, mixed (gets and puts in --read-ratio), batch (Batch calls of --batch keys) or pipeline (--depth operations in flight per Pipeline stream; see --depth)")
	fs.Float64Var(&cfg.ReadRatio, "read-ratio", cfg.ReadRatio, "share of gets, a `ratio` from 0 to 1: per operation for mixed and pipeline, per call for batch (the rest put); batch and pipeline send only gets unless it is given")
	fs.IntVar(&cfg.Batch, "batch", cfg.Batch, "keys per Batch call, MGET or MSET, `N` from 1 to 1000")
	fs.IntVar(&cfg.Depth, "depth", cfg.Depth, "pipeline depth `N`: Flux-KV keeps N operations in flight per Pipeline stream, sending one whenever one is answered; "+
		"Redis pipelines in lock-step, like redis-benchmark -P: N commands per round trip, then waits for all N replies. "+
		"Either way each operation counts as one request, and its latency is its own round trip (for Redis, the whole pipeline's)")
	fs.IntVar(&cfg.Keys, "keys", cfg.Keys, "size of the key space: `N` keys")
	fs.IntVar(&cfg.KeySize, "key-size", cfg.KeySize, "`bytes` per key: k and the key's zero-padded number; at most 1024 for Flux-KV")
	fs.IntVar(&cfg.ValueSize, "value-size", cfg.ValueSize, "`bytes` per value, random, the same for every key")
	fs.StringVar(&dist, "dist", dist, "key `distribution`: uniform, or zipfian (key k0...0 the most frequent)")
	fs.Float64Var(&cfg.ZipfS, "zipf-s", cfg.ZipfS, "`exponent` of the zipfian distribution, greater than 1: the larger, the more skewed")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "`N` workers, each with one request (or one pipeline) outstanding")
	fs.IntVar(&connections, "connections", connections, "HTTP/2 connections (one transport each, or one SDK client each with --etcd) the workers share in turn; `N` at most --concurrency, "+
		"and at least --concurrency/100: past 100 streams a connection may open others, which the summary would not count. With --redis, each worker has its own connection")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long to measure, after the warmup")
	fs.Int64Var(&cfg.Requests, "requests", 0, "measure `N` requests in all instead of for --duration (requests: RPCs or Redis commands; pipeline operations)")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "send requests for this long before measuring, without counting them")
	fs.BoolVar(&cfg.Preload, "preload", cfg.Preload, "before the warmup, write every key once (Batch calls, or MSET), so that gets find their key and puts overwrite; --preload=false skips it")
	fs.StringVar(&cf.endpoint, "endpoint", defaultEndpoint, "`URL` of the Flux-KV gateway or node to load")
	fs.StringVar(&cf.protocol, "protocol", cf.protocol, "wire `protocol` to Flux-KV: grpc, connect or grpcweb")
	fs.Var(&cf.etcd, "etcd", "comma-separated etcd `endpoints`: load the whole cluster through the Go SDK, which sends each key to its owner, instead of --endpoint (not with the pipeline workload, or --protocol connect)")
	fs.StringVar(&rf.addr, "redis", "", "`host:port` of a Redis server to run the same workload against instead of Flux-KV")
	fs.IntVar(&rf.db, "redis-db", 0, "Redis database `index` the keys are written to; bench never flushes it, and refuses to write into one holding keys other than its own (k and digits) unless --redis-overwrite is given")
	fs.BoolVar(&rf.overwrite, "redis-overwrite", false, "with --redis, write the keys even into a database that holds other keys, overwriting any of the same name")
	fs.BoolVar(&cf.json, "json", false, "print the summary as one JSON object, for scripts")
	c := &command{
		name: "bench",
		summary: "Load a Flux-KV endpoint, a cluster (--etcd) or Redis (--redis) with one workload and print throughput, " +
			"latency percentiles and errors. Exits 2 if no operation succeeded.",
		flags: fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) > 0 {
			return usageError(env, c.name, "unexpected arguments %q", args)
		}
		cfg.Workload, cfg.Distribution = bench.Workload(workload), bench.Distribution(dist)
		if (cfg.Workload == bench.Batch || cfg.Workload == bench.Pipeline) && !isSet(fs, "read-ratio") {
			cfg.ReadRatio = 1
		}
		if err := cfg.Validate(); err != nil {
			return usageError(env, c.name, "%v", err)
		}
		if connections < 1 || connections > cfg.Concurrency {
			return usageError(env, c.name, "--connections %d: want 1 to --concurrency (%d)", connections, cfg.Concurrency)
		}
		if rf.db < 0 {
			return usageError(env, c.name, "--redis-db %d: must not be negative", rf.db)
		}
		target, code := benchTarget(env, &cf, &cfg, connections, &rf)
		if target == nil {
			return code
		}
		defer target.Close()
		if isTerminal(env.stderr) {
			cfg.Progress = func(p bench.Progress) { printProgress(env, p) }
		}
		sum, err := bench.Run(env.ctx, cfg, target)
		if cfg.Progress != nil {
			fmt.Fprint(env.stderr, "\r\033[K")
		}
		if err != nil {
			fmt.Fprintf(env.stderr, "flux bench: %s\n", oneLine(err.Error()))
			return exitError
		}
		if cf.json {
			printJSON(env, sum)
		} else {
			_ = sum.WriteText(env.stdout)
		}
		if sum.Ops == 0 {
			fmt.Fprintf(env.stderr, "flux bench: no operation succeeded\n")
			return exitError
		}
		return exitOK
	}
	return c
}

// maxStreamsPerConn bounds the workers, each with one request or stream
// outstanding, that share one HTTP/2 connection, so that the connections
// the summary counts are all there are. Go's transport opens another
// connection to a host when one has as many streams as the server allows,
// and until the server's settings arrive it assumes 100, the least the
// HTTP/2 specification recommends a server allow (Flux-KV allows 250).
// Its StrictMaxConcurrentRequests, which would make requests wait for a
// stream instead, deadlocks when more requests wait than the server
// allows: each waiting request's reservation counts against the limit
// while the first holds the lock the others need to give theirs up.
const maxStreamsPerConn = 100

// etcdLoadTimeout bounds how long the SDK may take to load the cluster's
// membership from etcd before the run.
const etcdLoadTimeout = 10 * time.Second

// redisFlags are the flags that choose Redis as the target.
type redisFlags struct {
	addr      string // empty: the target is Flux-KV
	db        int
	overwrite bool // write into a database that holds other keys
}

// benchTarget builds the target the flags name; without one, it has
// reported why and returns the exit code.
func benchTarget(env *environment, cf *clientFlags, cfg *bench.Config, connections int, rf *redisFlags) (bench.Target, int) {
	if rf.addr != "" {
		if len(cf.etcd) > 0 {
			return nil, usageError(env, "bench", "--redis and --etcd exclude each other")
		}
		// A run never deletes what it writes: it must not mix its keys
		// into a database someone keeps data in.
		if !rf.overwrite && cfg.Writes() {
			key, err := bench.RedisForeignKey(env.ctx, rf.addr, rf.db)
			if err != nil {
				return nil, fail(env, "bench", err)
			}
			if key != "" {
				return nil, usageError(env, "bench", "--redis-db %d holds keys flux bench did not write (%q among them); "+
					"choose an empty database with --redis-db, or pass --redis-overwrite to write into it anyway", rf.db, key)
			}
		}
		return bench.NewRedis(rf.addr, rf.db, cfg.Concurrency), exitOK
	}
	if cfg.KeySize > bench.FluxMaxKeySize {
		return nil, usageError(env, "bench", "--key-size %d: Flux-KV takes keys of at most %d bytes", cfg.KeySize, bench.FluxMaxKeySize)
	}
	if perConn := (cfg.Concurrency + connections - 1) / connections; perConn > maxStreamsPerConn {
		return nil, usageError(env, "bench", "--connections %d: %d workers per connection, over %d: raise --connections to at least %d",
			connections, perConn, maxStreamsPerConn, (cfg.Concurrency+maxStreamsPerConn-1)/maxStreamsPerConn)
	}
	opts, err := cf.clientOptions()
	if err != nil {
		return nil, fail(env, "bench", err)
	}
	if len(cf.etcd) > 0 {
		switch {
		case cfg.Workload == bench.Pipeline:
			return nil, usageError(env, "bench", "--etcd: the Go SDK has no Pipeline; send the pipeline workload to a node or the gateway with --endpoint")
		case cf.protocol == "connect":
			return nil, usageError(env, "bench", "--etcd: the Go SDK speaks grpc or grpcweb; use --protocol grpc, or --endpoint for connect")
		}
		ctx, cancel := context.WithTimeout(env.ctx, etcdLoadTimeout)
		defer cancel()
		sdkOpts, err := cf.sdkOptions(opts)
		if err != nil {
			return nil, fail(env, "bench", err)
		}
		target, err := bench.NewFluxSDK(ctx, cf.etcd, connections, cf.protocol, sdkOpts...)
		if err != nil {
			return nil, fail(env, "bench", err)
		}
		return target, exitOK
	}
	base, err := cf.baseURL()
	if err != nil {
		return nil, fail(env, "bench", err)
	}
	clients := make([]*http.Client, connections)
	for i := range clients {
		if clients[i], err = cf.tls.httpClient(); err != nil {
			return nil, fail(env, "bench", err)
		}
	}
	return bench.NewFlux(base, cf.protocol, clients, opts...), exitOK
}

// isTerminal reports whether w is a terminal, where a progress line that
// rewrites itself makes sense.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}

func printProgress(env *environment, p bench.Progress) {
	switch p.Phase {
	case bench.PhasePreload:
		fmt.Fprint(env.stderr, "\r\033[Kpreloading keys...")
	default:
		fmt.Fprintf(env.stderr, "\r\033[K%-7s %6.1fs %12d ops %12.0f ops/s", p.Phase, p.Elapsed.Seconds(), p.Ops, p.Rate)
	}
}
