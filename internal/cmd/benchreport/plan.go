package main

import (
	"context"
	"fmt"
	"strconv"
)

// comparison is one table of the report: cases run back to back, each row
// compared with its baseline row.
type comparison struct {
	ID    string // names its chart, docs/bench/<ID>.svg
	Title string
	About string // Markdown paragraph: what runs, and how
	Rows  []row
	// Pipelined latency, per operation with others in flight, is left out
	// of the latency chart, whose other cases have one request in flight.
	Pipelined bool
}

// row is one case of a comparison.
type row struct {
	Case *caseResult
	Base *caseResult // the case this one is a ratio of; nil for a baseline
	Goal goal
}

func (r row) ratio() float64 {
	if r.Base == nil {
		return 1
	}
	return ratio(r.Case.Summary.OpsPerSecond, r.Base.Summary.OpsPerSecond)
}

// redisLogMode is the node log that matches Redis's persistence, so that
// Flux-KV and Redis are compared doing the same work per write.
func redisLogMode(m machine) logMode {
	if m.RedisAOF != "yes" {
		return logOff
	}
	switch logMode(m.RedisFsync) {
	case logAlways, logNo:
		return logMode(m.RedisFsync)
	}
	return logEverysec
}

// runComparisons runs every `flux bench` case, in the order of the report.
func (r *runner) runComparisons(ctx context.Context, m machine) ([]comparison, error) {
	matched := nodeSpec{log: redisLogMode(m)}
	var comps []comparison
	steps := []func(context.Context, nodeSpec) (comparison, error){
		r.vsRedis, r.pipeline, r.gateway, r.logPolicies, r.cdc, r.protocols,
	}
	for _, step := range steps {
		c, err := step(ctx, matched)
		if err != nil {
			return nil, err
		}
		comps = append(comps, c)
	}
	return comps, nil
}

func (r *runner) vsRedis(ctx context.Context, matched nodeSpec) (comparison, error) {
	c := comparison{ID: "vs-redis", Title: "Flux-KV vs Redis: Get and Put",
		About: fmt.Sprintf("One `flux node` (%s, matching Redis's persistence on this machine) against Redis: "+
			"%d workers, each with its own connection and one request outstanding (no pipelining). "+
			"Gets read keys written before the warmup; puts overwrite them.", matched.log.describe(), clients)}
	redisGet, err := r.redisCase(ctx, "redis-get", "Redis GET", "get")
	if err != nil {
		return c, err
	}
	fluxGet, err := r.fluxCase(ctx, "flux-get", "Flux-KV Get", matched, "get", "grpc")
	if err != nil {
		return c, err
	}
	redisSet, err := r.redisCase(ctx, "redis-set", "Redis SET", "put")
	if err != nil {
		return c, err
	}
	fluxPut, err := r.fluxCase(ctx, "flux-put", "Flux-KV Put", matched, "put", "grpc")
	if err != nil {
		return c, err
	}
	c.Rows = []row{{Case: redisGet}, {Case: fluxGet, Base: redisGet, Goal: atLeast(0.5)},
		{Case: redisSet}, {Case: fluxPut, Base: redisSet, Goal: atLeast(0.5)}}
	return c, nil
}

func (r *runner) pipeline(ctx context.Context, matched nodeSpec) (comparison, error) {
	d := strconv.Itoa(depth)
	c := comparison{ID: "pipeline", Title: "Pipelining: Flux-KV Pipeline vs Redis pipelining", Pipelined: true,
		About: fmt.Sprintf("Gets only, %d workers. The two pipeline differently, each in its usual way. "+
			"Flux-KV: one Pipeline stream per worker that keeps %d operations in flight, sending the next whenever one is answered. "+
			"Redis: lock-step, like redis-benchmark -P %d: each worker sends %d GETs in one round trip and waits for all %d replies before it sends more. "+
			"Both count every operation as one request and time it from when it was sent to its reply: for Redis, that is its whole round trip. "+
			"These latencies are with %d operations in flight per worker, so the latency chart leaves them out.",
			clients, depth, depth, depth, depth, depth)}
	redisP, err := r.redisCase(ctx, "redis-pipeline", "Redis GET, pipelined 16", "pipeline", "--depth", d)
	if err != nil {
		return c, err
	}
	fluxP, err := r.fluxCase(ctx, "flux-pipeline", "Flux-KV Pipeline, depth 16", matched, "pipeline", "grpc", "--depth", d)
	if err != nil {
		return c, err
	}
	c.Rows = []row{{Case: redisP}, {Case: fluxP, Base: redisP, Goal: atLeast(0.5)}}
	return c, nil
}

func (r *runner) gateway(ctx context.Context, _ nodeSpec) (comparison, error) {
	c := comparison{ID: "gateway", Title: "Gateway vs direct to the node",
		About: fmt.Sprintf("`flux dev --nodes 1`: embedded etcd, one node (appendfsync everysec) and the gateway in one process. "+
			"Gets from %d workers, sent to the node's port directly, or to the gateway, which forwards each call to the node "+
			"with the policies flux dev sets (singleflight on, no rate limit).", clients)}
	var cases [2]*caseResult
	for i, via := range []string{"direct", "gateway"} {
		s, node, err := r.startDev(ctx)
		if err != nil {
			return c, err
		}
		endpoint, label := node, "Get, direct to the node"
		if via == "gateway" {
			endpoint, label = s.endpoint, "Get, through the gateway"
		}
		args := append(r.benchArgs("get"), fluxArgs(endpoint, "grpc")...)
		cases[i], err = r.bench(ctx, via, label, "flux dev --nodes 1, grpc", args)
		if stopErr := r.procs.stop(s); err == nil && stopErr != nil {
			err = stopErr
		}
		if err != nil {
			return c, err
		}
	}
	c.Rows = []row{{Case: cases[0]}, {Case: cases[1], Base: cases[0], Goal: atLeast(0.5)}}
	return c, nil
}

func (r *runner) logPolicies(ctx context.Context, _ nodeSpec) (comparison, error) {
	c := comparison{ID: "log", Title: "Append-only file: off vs everysec vs always",
		About: fmt.Sprintf("Puts from %d workers to one node. \"off\" is `--aof=false`: the node keeps no file at all. "+
			"everysec fsyncs once a second; always acknowledges a write only after an fsync, with one fsync shared by all writers waiting (group commit).", clients)}
	var off *caseResult
	for _, mode := range []logMode{logOff, logEverysec, logAlways} {
		res, err := r.fluxCase(ctx, "log-"+string(mode), "Put, log "+string(mode), nodeSpec{log: mode}, "put", "grpc")
		if err != nil {
			return c, err
		}
		switch mode {
		case logOff:
			off = res
			c.Rows = append(c.Rows, row{Case: res})
		case logEverysec:
			c.Rows = append(c.Rows, row{Case: res, Base: off, Goal: atLeast(0.9)})
		default:
			c.Rows = append(c.Rows, row{Case: res, Base: off})
		}
	}
	return c, nil
}

func (r *runner) cdc(ctx context.Context, _ nodeSpec) (comparison, error) {
	c := comparison{ID: "cdc", Title: "CDC on vs off",
		About: fmt.Sprintf("Puts from %d workers to one node with appendfsync everysec, without and with the CDC relay publishing every change "+
			"to RabbitMQ (%s, exchange flux.cdc, publisher confirms, persistent messages into the durable queue %s, which nothing consumes "+
			"and which is deleted afterwards). RabbitMQ runs on the same machine.", clients, "127.0.0.1:5672", cdcQueue)}
	if err := deleteQueue(cdcQueue); err != nil {
		return c, err
	}
	off, err := r.fluxCase(ctx, "cdc-off", "Put, CDC off", nodeSpec{log: logEverysec}, "put", "grpc")
	if err != nil {
		return c, err
	}
	on, err := r.fluxCase(ctx, "cdc-on", "Put, CDC on", nodeSpec{log: logEverysec, cdc: true}, "put", "grpc")
	if derr := deleteQueue(cdcQueue); err == nil {
		err = derr
	}
	if err != nil {
		return c, err
	}
	c.Rows = []row{{Case: off}, {Case: on, Base: off, Goal: atLeast(0.8)}}
	return c, nil
}

func (r *runner) protocols(ctx context.Context, matched nodeSpec) (comparison, error) {
	c := comparison{ID: "protocol", Title: "Wire protocols: gRPC vs Connect vs gRPC-Web",
		About: fmt.Sprintf("Gets from %d workers to one node (%s), the same handler serving all three protocols on one port; Connect sends binary protobuf.",
			clients, matched.log.describe())}
	var grpc *caseResult
	for _, p := range []string{"grpc", "connect", "grpcweb"} {
		res, err := r.fluxCase(ctx, "protocol-"+p, "Get over "+p, matched, "get", p)
		if err != nil {
			return c, err
		}
		if grpc == nil {
			grpc = res
			c.Rows = append(c.Rows, row{Case: res})
			continue
		}
		c.Rows = append(c.Rows, row{Case: res, Base: grpc})
	}
	return c, nil
}
