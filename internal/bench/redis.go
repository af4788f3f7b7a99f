package bench

import (
	"context"
	"errors"
	"fmt"
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
// pipeline sends Depth commands per round trip and waits for all their
// replies before it sends more (lock-step, like redis-benchmark -P), where
// a Flux-KV Pipeline stream sends an operation whenever one is answered.
// Either way each operation is one request, timed from when its round
// trip started. Nothing is ever flushed: the keys written stay in db (see
// RedisForeignKey). Close closes the pool.
//
// It silences go-redis's logger, which is process-wide: a run counts
// failures in its summary instead of logging each one.
func NewRedis(addr string, db, workers int) Target {
	opts := redisOptions(addr, db)
	opts.PoolSize = workers
	// Pipelines would otherwise get a separate, smaller pool.
	opts.PipelinePoolSize = -1
	return &redisTarget{info: TargetInfo{Name: "redis", Endpoint: addr, Protocol: "resp", Connections: workers}, c: redis.NewClient(opts)}
}

// redisOptions are the client options of every connection to the server
// under test.
func redisOptions(addr string, db int) *redis.Options {
	silenceRedis.Do(func() { redis.SetLogger(discard{}) })
	return &redis.Options{
		Addr: addr,
		DB:   db,
		// A benchmark counts failures rather than retrying them away, as
		// the Flux-KV targets do.
		MaxRetries:               -1,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// RedisForeignKey returns a key of database db of the Redis server at addr
// that a run could not have written, one that is not "k" followed by
// digits, or "" if the database holds none. A run writes its keys into the
// database and never deletes them, so the caller should refuse to run
// against a database this finds a key in unless told to. It scans the
// database until it finds one, and fails if Redis cannot be reached.
func RedisForeignKey(ctx context.Context, addr string, db int) (string, error) {
	c := redis.NewClient(redisOptions(addr, db))
	defer c.Close()
	iter := c.Scan(ctx, 0, "", 1000).Iterator()
	for iter.Next(ctx) {
		if key := iter.Val(); !isBenchKey(key) {
			return key, nil
		}
	}
	if err := iter.Err(); err != nil {
		return "", fmt.Errorf("redis %s db %d: %w", addr, db, err)
	}
	return "", nil
}

// isBenchKey reports whether key has the form of a Keyspace's keys, of
// any width.
func isBenchKey(key string) bool {
	if len(key) < 2 || key[0] != 'k' {
		return false
	}
	for _, c := range []byte(key[1:]) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
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
		cfg:    cfg,
		c:      t.c,
		pipe:   t.c.Pipeline(),
		starts: make([]int64, cfg.Depth),
		value:  value,
		mget:   make([]string, cfg.Batch),
		mset:   make([]any, 2*cfg.Batch),
	}
	for i := range cfg.Batch {
		w.mset[2*i+1] = w.value
	}
	return w, nil
}

// redisWorker holds one worker's reusable arguments.
type redisWorker struct {
	cfg    *Config
	c      *redis.Client
	pipe   redis.Pipeliner
	starts []int64 // of the operations of the pipeline being sent
	value  any     // boxed once
	mget   []string
	mset   []any // key, value, key, value...
}

func (w *redisWorker) Run(ctx context.Context, gen *Generator, rec *Recorder) {
	if w.cfg.Workload == Pipeline {
		for w.pipeline(ctx, gen, rec) {
		}
		return
	}
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
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			rec.Fail(start, redisErrorName(err))
			continue
		}
		rec.Done(start, ops)
	}
}

// pipeline sends one round trip of up to Depth commands, each a request
// of its own that rec allowed, and records every command's outcome with
// the time from its start to the end of the round trip. It reports whether
// the run goes on.
func (w *redisWorker) pipeline(ctx context.Context, gen *Generator, rec *Recorder) bool {
	n := 0
	for n < len(w.starts) {
		start, ok := rec.Next()
		if !ok {
			break
		}
		w.starts[n] = start
		n++
		if gen.Read() {
			w.pipe.Get(ctx, gen.Key())
		} else {
			w.pipe.Set(ctx, gen.Key(), w.value, 0)
		}
	}
	if n == 0 {
		return false
	}
	// A failed round trip sets its error on every command it did not
	// answer, so the commands tell every outcome.
	cmds, _ := w.pipe.Exec(ctx)
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
			rec.Fail(w.starts[i], redisErrorName(err))
			continue
		}
		rec.Done(w.starts[i], 1)
	}
	return n == len(w.starts)
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
