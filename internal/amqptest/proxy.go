package amqptest

import (
	"crypto/tls"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/internal/testcerts"
)

// Proxy forwards TCP connections to the broker on a loopback port of its
// own, so that a test can take the broker away from the code under test
// (Cut) while the test itself still reaches it directly.
type Proxy struct {
	t      testing.TB
	addr   string      // host:port the proxy listens on, kept across Cut and Restore
	target string      // the broker's host:port
	url    string      // the broker URL through the proxy
	tls    *tls.Config // set: clients speak TLS to the proxy (amqps://)
	caFile string      // the CA bundle that signed the TLS proxy's certificate
	wg     sync.WaitGroup

	frozen atomic.Bool // hold data instead of forwarding it

	mu    sync.Mutex
	ln    net.Listener // nil while cut
	conns map[net.Conn]struct{}
}

// NewProxy starts a proxy to the broker of brokerURL. It is cut, and its
// goroutines waited for, when the test ends.
func NewProxy(t testing.TB, brokerURL string) *Proxy {
	t.Helper()
	return newProxy(t, brokerURL, nil)
}

// NewTLSProxy is a proxy that clients reach over TLS and that forwards in
// cleartext to the broker: a broker that serves amqps://, as far as its
// clients can tell. Its certificate is signed by a CA made for the test,
// whose bundle CAFile returns. URL is then an amqps:// URL.
func NewTLSProxy(t testing.TB, brokerURL string) *Proxy {
	t.Helper()
	ca := testcerts.NewCA(t, "amqp-test")
	pair := ca.Server("rabbitmq")
	p := newProxy(t, brokerURL, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair.TLS}})
	p.caFile = ca.File
	return p
}

// CAFile is the CA bundle that verifies a TLS proxy's certificate.
func (p *Proxy) CAFile() string { return p.caFile }

func newProxy(t testing.TB, brokerURL string, cfg *tls.Config) *Proxy {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatalf("broker URL does not parse: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{t: t, addr: ln.Addr().String(), target: u.Host, tls: cfg, conns: map[net.Conn]struct{}{}}
	p.url = WithHost(t, brokerURL, p.addr)
	if cfg != nil {
		p.url = "amqps" + strings.TrimPrefix(p.url, "amqp")
	}
	p.serve(ln)
	t.Cleanup(func() {
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// URL is the broker URL through the proxy, credentials and vhost included.
func (p *Proxy) URL() string { return p.url }

// Addr is the host:port the proxy listens on.
func (p *Proxy) Addr() string { return p.addr }

func (p *Proxy) serve(ln net.Listener) {
	if p.tls != nil {
		ln = tls.NewListener(ln, p.tls)
	}
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
			up, err := net.DialTimeout("tcp", p.target, dialTimeout)
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
func (p *Proxy) pipe(dst, src net.Conn) {
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

// Cut closes every connection through the proxy and refuses new ones, as
// a broker that went down does. It also ends a Freeze. Cutting a cut proxy
// does nothing.
func (p *Proxy) Cut() {
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

// Restore accepts connections again, on the same address. It fails the
// test if the address was taken meanwhile, so it must be called from the
// test's goroutine.
func (p *Proxy) Restore() {
	p.t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}

// Freeze keeps the connections open but stops forwarding data in either
// direction, as a broker that hangs does: the peers see no error, only
// silence, until Thaw or Cut.
func (p *Proxy) Freeze() { p.frozen.Store(true) }

// Thaw forwards again what Freeze held, and what follows.
func (p *Proxy) Thaw() { p.frozen.Store(false) }
