package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// redisConn is the report's client of the Redis it compares Flux-KV with.
// It is bound to database redisDB, the only one the report writes to and
// flushes; INFO and CONFIG GET describe the whole server.
type redisConn struct {
	c *redis.Client
}

// dialRedis connects to addr within timeout; the error says how to fix an
// unreachable server, because the whole report depends on it.
func dialRedis(ctx context.Context, addr string, timeout time.Duration) (*redisConn, error) {
	c := redis.NewClient(&redis.Options{
		Addr:         addr,
		DB:           redisDB,
		DialTimeout:  timeout,
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
		PoolSize:     1,
		// Fail at once: the report says what is wrong rather than waiting.
		MaxRetries:               -1,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis at %s is unreachable (%v): the report compares Flux-KV with Redis, so start redis-server on %s first", addr, err, addr)
	}
	return &redisConn{c: c}, nil
}

func (r *redisConn) Close() error { return r.c.Close() }

// info returns the fields of INFO section, of every subsection, as one
// map.
func (r *redisConn) info(ctx context.Context, section string) (map[string]string, error) {
	sections, err := r.c.InfoMap(ctx, section).Result()
	if err != nil {
		return nil, fmt.Errorf("redis INFO %s: %w", section, err)
	}
	fields := map[string]string{}
	for _, s := range sections {
		for k, v := range s {
			fields[k] = v
		}
	}
	return fields, nil
}

// config returns the value of one configuration parameter; ok is false
// when the server does not allow CONFIG GET (it can be renamed away).
func (r *redisConn) config(ctx context.Context, name string) (value string, ok bool) {
	m, err := r.c.ConfigGet(ctx, name).Result()
	if err != nil {
		return "", false
	}
	value, ok = m[name]
	return value, ok
}

// dbsize returns the number of keys in database redisDB.
func (r *redisConn) dbsize(ctx context.Context) (int64, error) {
	n, err := r.c.DBSize(ctx).Result()
	if err != nil {
		return 0, fmt.Errorf("redis DBSIZE: %w", err)
	}
	return n, nil
}

// flushDB empties database redisDB, and only it: the report never touches
// the other databases of a shared Redis. It cleans up, so it runs even
// when ctx has ended (bounded by the client's timeouts).
func (r *redisConn) flushDB(ctx context.Context) error {
	if err := r.c.FlushDB(context.WithoutCancel(ctx)).Err(); err != nil {
		return fmt.Errorf("redis FLUSHDB on database %d: %w", redisDB, err)
	}
	return nil
}

// infoInt returns an integer INFO field.
func infoInt(info map[string]string, field string) (int64, error) {
	v, ok := info[field]
	if !ok {
		return 0, fmt.Errorf("redis INFO has no %s", field)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("redis INFO %s=%q: %w", field, v, err)
	}
	return n, nil
}
