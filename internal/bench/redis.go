package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// redisTarget is a Redis server, for comparison: the same workloads as
// RESP commands.
type redisTarget struct {
	info TargetInfo
	c    *redis.Client
}

// NewRedis returns a target that runs the workloads against the Redis
// server at addr, in database db, with a pool of one connection per
// worker: RESP cannot interleave requests on a connection, so each worker
// needs its own. Gets are GET, puts SET, batches MGET or MSET, and a
// pipeline sends Depth commands per round trip. Nothing is ever flushed:
// the keys written stay in db. Close closes the pool.
//
// It silences go-redis's logger, which is process-wide: a run counts
// failures in its summary instead of logging each one.
func NewRedis(addr string, db, workers int) Target {
	silenceRedis.Do(func() { redis.SetLogger(discard{}) })
	c := redis.NewClient(&redis.Options{
		Addr:     addr,
		DB:       db,
		PoolSize: workers,
		// Pipelines would otherwise get a separate, smaller pool.
		PipelinePoolSize: -1,
		// A benchmark counts failures rather than retrying them away, as
		// the Flux-KV targets do.
		MaxRetries:               -1,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	return &redisTarget{info: TargetInfo{Name: "redis", Endpoint: addr, Protocol: "resp", Connections: workers}, c: c}
}

var silenceRedis sync.Once

type discard struct{}

func (discard) Printf(context.Context, string, ...any) {}

func (t *redisTarget) Info() TargetInfo { return t.info }

func (t *redisTarget) Close() error { return t.c.Close() }

func (t *redisTarget) Preload(ctx context.Context, keys *Keyspace, value []byte) error {
	chunk := min(1000, max(1, preloadBytes/(keys.width+len(value)+16)))
	return preload(ctx, keys.Len(), chunk, min(8, t.info.Connections), func(_, from, to int) error {
		pairs := make([]any, 0, 2*(to-from))
		for k := from; k < to; k++ {
			pairs = append(pairs, keys.Key(k), value)
		}
		return t.c.MSet(ctx, pairs...).Err()
	})
}

func (t *redisTarget) NewWorker(_ int, cfg *Config, value []byte) (Worker, error) {
	w := &redisWorker{
		cfg:   cfg,
		c:     t.c,
		pipe:  t.c.Pipeline(),
		value: value,
		mget:  make([]string, cfg.Batch),
		mset:  make([]any, 2*cfg.Batch),
	}
	for i := range cfg.Batch {
		w.mset[2*i+1] = w.value
	}
	return w, nil
}

// redisWorker holds one worker's reusable arguments.
type redisWorker struct {
	cfg   *Config
	c     *redis.Client
	pipe  redis.Pipeliner
	value any // boxed once
	mget  []string
	mset  []any // key, value, key, value...
}

func (w *redisWorker) Run(ctx context.Context, gen *Generator, rec *Recorder) {
	for {
		start, ok := rec.Next()
		if !ok {
			return
		}
		var err error
		ops := 1
		switch w.cfg.Workload {
		case Get:
			err = w.c.Get(ctx, gen.Key()).Err()
		case Put:
			err = w.c.Set(ctx, gen.Key(), w.value, 0).Err()
		case Mixed:
			if gen.Read() {
				err = w.c.Get(ctx, gen.Key()).Err()
			} else {
				err = w.c.Set(ctx, gen.Key(), w.value, 0).Err()
			}
		case Batch:
			ops = len(w.mget)
			if gen.Read() {
				for i := range w.mget {
					w.mget[i] = gen.Key()
				}
				err = w.c.MGet(ctx, w.mget...).Err()
			} else {
				for i := 0; i < len(w.mset); i += 2 {
					w.mset[i] = gen.Key()
				}
				err = w.c.MSet(ctx, w.mset...).Err()
			}
		case Pipeline:
			ops, err = w.doPipeline(ctx, gen, rec, start)
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			rec.Fail(start, redisErrorName(err))
			continue
		}
		rec.Done(start, ops)
	}
}

// doPipeline sends Depth commands in one round trip and returns the number
// that succeeded; those the server refused are counted with rec. An error
// means the round trip failed.
func (w *redisWorker) doPipeline(ctx context.Context, gen *Generator, rec *Recorder, start int64) (int, error) {
	for range w.cfg.Depth {
		if gen.Read() {
			w.pipe.Get(ctx, gen.Key())
		} else {
			w.pipe.Set(ctx, gen.Key(), w.value, 0)
		}
	}
	cmds, _ := w.pipe.Exec(ctx)
	ok := 0
	for _, cmd := range cmds {
		var rerr redis.Error
		switch err := cmd.Err(); {
		case err == nil || errors.Is(err, redis.Nil):
			ok++
		case errors.As(err, &rerr):
			rec.FailOps(start, redisErrorName(err), 1)
		default:
			return 0, err
		}
	}
	return ok, nil
}

// redisErrorName names the kind of a Redis error: the kind of an error
// reply (ERR, WRONGTYPE, OOM...) or of a connection failure.
func redisErrorName(err error) string {
	var (
		rerr redis.Error
		nerr net.Error
	)
	switch {
	case errors.As(err, &rerr):
		kind, _, _ := strings.Cut(rerr.Error(), " ")
		return "redis: " + kind
	case errors.Is(err, redis.ErrPoolTimeout):
		return "redis: pool timeout"
	case errors.Is(err, redis.ErrClosed):
		return "redis: client closed"
	case errors.Is(err, context.Canceled):
		return "redis: canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return "redis: timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "redis: connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "redis: connection lost"
	default:
		return "redis: other"
	}
}
