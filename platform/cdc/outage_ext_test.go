package cdc_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/platform/cdc"
)

// proxy forwards TCP connections to the broker until it is cut.
type proxy struct {
	t      *testing.T
	addr   string
	target string
	wg     sync.WaitGroup

	frozen atomic.Bool // hold data instead of forwarding it

	mu    sync.Mutex
	ln    net.Listener // nil while cut
	conns map[net.Conn]struct{}
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, addr: ln.Addr().String(), target: target, conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	t.Cleanup(func() {
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			if p.ln != ln { // cut meanwhile
				p.mu.Unlock()
				_, _ = c.Close(), up.Close()
				continue
			}
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.wg.Add(2)
			p.mu.Unlock()
			go p.pipe(c, up)
			go p.pipe(up, c)
		}
	}()
}

// pipe copies src to dst, holding data while the proxy is frozen, and
// closes both once either side ends.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for p.frozen.Load() {
			time.Sleep(5 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_, _ = dst.Close(), src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// cut closes every connection and refuses new ones.
func (p *proxy) cut() {
	p.frozen.Store(false)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		_ = c.Close()
	}
}

// restore accepts connections again, on the same address.
func (p *proxy) restore() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("proxy: listen again: %v", err)
	}
	p.serve(ln)
}

func TestBrokerOutage(t *testing.T) {
	t.Parallel()
	broker := brokerURL(t)
	exchange, queue := names(t, broker)
	u, err := url.Parse(broker)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u.Host)
	const node = "node-e"
	src := newMemSource(node)
	h := newRelay(t, cdc.Config{
		URL: viaHost(t, broker, p.addr), NodeID: node, Exchange: exchange, Queue: queue,
		CheckpointDir: t.TempDir(), CheckpointInterval: 20 * time.Millisecond,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 500 * time.Millisecond,
	}, src)
	h.relay.Start()

	// The node keeps writing throughout; its writes never wait for the relay.
	stopWriting := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopWriting:
				return
			case <-t.C:
				src.Append(10)
			}
		}
	}()
	defer func() {
		select {
		case <-stopWriting:
		default:
			close(stopWriting)
		}
		<-writerDone
	}()

	eventually(t, "events confirmed", func() bool { return h.relay.Checkpoint() > 0 })
	p.cut()
	eventually(t, "the relay to see the outage", func() bool { return h.metric(t, "flux_cdc_connected") == 0 })
	time.Sleep(3 * time.Second)
	if lag := h.metric(t, "flux_cdc_lag_revisions"); lag <= 0 {
		t.Errorf("lag %v revisions during the outage, want some", lag)
	}
	if lag := h.metric(t, "flux_cdc_lag_seconds"); lag <= 0 {
		t.Errorf("lag %v seconds during the outage, want some", lag)
	}
	p.restore()
	eventually(t, "the relay to reconnect", func() bool { return h.metric(t, "flux_cdc_connected") == 1 })
	time.Sleep(300 * time.Millisecond)
	close(stopWriting)
	<-writerDone
	last := src.Durable()

	got := consume(t, broker, queue)
	eventually(t, "every event in the queue", func() bool { return got.has(node, last) })
	got.checkExactlyOnce(t, node, last, false)
	eventually(t, "checkpoint at the last revision", func() bool { return h.relay.Checkpoint() == last })
	if n := h.metric(t, "flux_cdc_connections_total"); n < 2 {
		t.Errorf("%v connections, want a reconnect", n)
	}
	logs := h.logs.String()
	for _, want := range []string{"broker connection lost", "broker connection restored"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func TestCloseGivesUpWaitingForConfirms(t *testing.T) {
	t.Parallel()
	broker := brokerURL(t)
	exchange, queue := names(t, broker)
	u, err := url.Parse(broker)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u.Host)
	const node = "node-g"
	src := newMemSource(node)
	src.Append(100)
	dir := t.TempDir()
	cfg := cdc.Config{
		URL: viaHost(t, broker, p.addr), NodeID: node, Exchange: exchange, Queue: queue,
		CheckpointDir: dir, CheckpointInterval: 20 * time.Millisecond,
	}
	first := newRelay(t, cfg, src)
	first.relay.Start()
	eventually(t, "events confirmed", func() bool { return first.relay.Checkpoint() == 100 })

	// The broker stops answering but the connection stays up: published
	// events wait for confirms that do not come.
	p.frozen.Store(true)
	last := src.Append(100)
	eventually(t, "events published", func() bool { return first.metric(t, "flux_cdc_published_total") > 100 })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := first.close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("close: %v, want it to give up at the deadline", err)
	}
	if cp := first.relay.Checkpoint(); cp != 100 {
		t.Errorf("checkpoint %d, want 100: nothing after it was confirmed", cp)
	}
	p.frozen.Store(false)

	// What was left unconfirmed is published again by the next relay.
	second := newRelay(t, cfg, src)
	second.relay.Start()
	got := consume(t, broker, queue)
	eventually(t, "every event in the queue", func() bool { return got.has(node, last) })
	got.checkExactlyOnce(t, node, last, false)
}
