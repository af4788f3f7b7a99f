package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// redisConn is the least of a Redis client the report needs: a few
// commands over one RESP connection. The project's modules hold no Redis
// client, and INFO, SELECT, DBSIZE and FLUSHDB do not justify one.
type redisConn struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialRedis connects to addr within timeout; the error says how to fix an
// unreachable server, because the whole report depends on it.
func dialRedis(ctx context.Context, addr string, timeout time.Duration) (*redisConn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("redis at %s is unreachable (%v): the report compares Flux-KV with Redis, so start redis-server on %s first", addr, err, addr)
	}
	return &redisConn{conn: conn, r: bufio.NewReader(conn)}, nil
}

func (c *redisConn) Close() error { return c.conn.Close() }

// do sends one command and returns its reply: a string for simple and bulk
// strings, an int64 for integers, a []any for arrays, nil for a null. A Redis
// error reply is returned as an error.
func (c *redisConn) do(args ...string) (any, error) {
	if err := c.conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c.conn, b.String()); err != nil {
		return nil, fmt.Errorf("redis %s: %w", args[0], err)
	}
	reply, err := readReply(c.r)
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", args[0], err)
	}
	return reply, nil
}

// info returns the fields of INFO section as a map.
func (c *redisConn) info(section string) (map[string]string, error) {
	reply, err := c.do("INFO", section)
	if err != nil {
		return nil, err
	}
	s, ok := reply.(string)
	if !ok {
		return nil, fmt.Errorf("redis INFO %s: unexpected reply %T", section, reply)
	}
	return parseInfo(s), nil
}

// config returns the value of one configuration parameter; ok is false
// when the server does not allow CONFIG GET (it can be renamed away).
func (c *redisConn) config(name string) (value string, ok bool) {
	reply, err := c.do("CONFIG", "GET", name)
	if err != nil {
		return "", false
	}
	if a, isArray := reply.([]any); isArray && len(a) == 2 {
		value, ok = a[1].(string)
	}
	return value, ok
}

// dbsize returns the number of keys in database db, leaving db selected.
func (c *redisConn) dbsize(db int) (int64, error) {
	if _, err := c.do("SELECT", strconv.Itoa(db)); err != nil {
		return 0, err
	}
	reply, err := c.do("DBSIZE")
	if err != nil {
		return 0, err
	}
	n, ok := reply.(int64)
	if !ok {
		return 0, fmt.Errorf("redis DBSIZE: unexpected reply %T", reply)
	}
	return n, nil
}

// flushDB empties database db, and only it: the report never touches the
// other databases of a shared Redis.
func (c *redisConn) flushDB(db int) error {
	if _, err := c.do("SELECT", strconv.Itoa(db)); err != nil {
		return err
	}
	_, err := c.do("FLUSHDB")
	return err
}

func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || !strings.HasSuffix(line, "\r\n") {
		return nil, fmt.Errorf("malformed reply line %q", line)
	}
	kind, body := line[0], line[1:len(line)-2]
	switch kind {
	case '+':
		return body, nil
	case '-':
		return nil, fmt.Errorf("server error: %s", body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, fmt.Errorf("bulk length %q: %w", body, err)
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, fmt.Errorf("array length %q: %w", body, err)
		}
		if n < 0 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readReply(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unknown reply type %q", kind)
	}
}

// parseInfo turns INFO's "field:value" lines into a map, skipping the
// "# Section" headers and blank lines.
func parseInfo(s string) map[string]string {
	m := make(map[string]string)
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = v
		}
	}
	return m
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
