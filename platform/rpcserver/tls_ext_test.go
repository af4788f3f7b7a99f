package rpcserver_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/internal/testcerts"
	"github.com/fluxkv/fluxkv/platform/rpcserver"
	"github.com/fluxkv/fluxkv/platform/tlsfiles"
)

// TestTLS: a TLS server speaks HTTP/2 and HTTP/1.1 as ALPN negotiates, and
// nothing in cleartext.
func TestTLS(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA(t, "flux-test")
	pair := ca.Server("node")
	files, err := tlsfiles.Load(tlsfiles.Files{Cert: pair.Cert, Key: pair.Key})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := files.Server()
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Proto)
	})
	srv, err := rpcserver.Listen("127.0.0.1:0", h, rpcserver.Options{TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	if !srv.TLS() || !strings.HasPrefix(srv.URL(), "https://") {
		t.Fatalf("TLS server: TLS() %v, URL %s", srv.TLS(), srv.URL())
	}

	get := func(protocols func(*http.Protocols), tlsConfig *tls.Config, url string) (string, error) {
		var p http.Protocols
		protocols(&p)
		// A transport that speaks HTTP/2 adds h2 to its TLS configuration's
		// ALPN list: each gets its own.
		c := &http.Client{Transport: &http.Transport{Protocols: &p, TLSClientConfig: tlsConfig.Clone()}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	trust := &tls.Config{RootCAs: ca.Pool()}
	if got, err := get(func(p *http.Protocols) { p.SetHTTP2(true) }, trust, srv.URL()); err != nil || got != "HTTP/2.0" {
		t.Errorf("HTTP/2 over TLS: %q, %v", got, err)
	}
	if got, err := get(func(p *http.Protocols) { p.SetHTTP1(true) }, trust, srv.URL()); err != nil || got != "HTTP/1.1" {
		t.Errorf("HTTP/1.1 over TLS: %q, %v", got, err)
	}
	// Cleartext, h2c or HTTP/1.1, gets nothing.
	plain := "http://" + srv.Addr().String()
	if got, err := get(func(p *http.Protocols) { p.SetUnencryptedHTTP2(true) }, nil, plain); err == nil {
		t.Errorf("h2c to a TLS port: got %q", got)
	}
	// (net/http answers a cleartext HTTP/1 request on a TLS port with a
	// plain 400 that says so.)
	if got, err := get(func(p *http.Protocols) { p.SetHTTP1(true) }, nil, plain); err == nil && !strings.Contains(got, "HTTPS server") {
		t.Errorf("HTTP/1.1 in cleartext to a TLS port: got %q", got)
	}

	if _, err := rpcserver.Listen("127.0.0.1:0", h, rpcserver.Options{TLS: &tls.Config{}}); err == nil {
		t.Error("Listen with a TLS configuration without a certificate: nil error")
	}
}

// TestCORSAllowsBearerTokens: a page on another origin may send a token.
func TestCORSAllowsBearerTokens(t *testing.T) {
	t.Parallel()
	h := rpcserver.CORS(http.NotFoundHandler(), []string{"https://app.example"})
	req, err := http.NewRequest(http.MethodOptions, "/flux.kv.v1.KVService/Put", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", http.MethodPost)
	req.Header.Set("Access-Control-Request-Headers", "authorization,connect-protocol-version,content-type") // sorted, as browsers send it
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if allowed := strings.ToLower(rec.Header().Get("Access-Control-Allow-Headers")); !strings.Contains(allowed, "authorization") {
		t.Errorf("preflight asking for Authorization: Access-Control-Allow-Headers %q", allowed)
	}
}

// TestCleartextServerStaysCleartext: a server without TLS reports so, and
// its URL stays http://, also once it serves HTTP/2.
func TestCleartextServerStaysCleartext(t *testing.T) {
	t.Parallel()
	srv, err := rpcserver.Listen("127.0.0.1:0", http.NotFoundHandler(), rpcserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: &p}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if srv.TLS() || !strings.HasPrefix(srv.URL(), "http://") {
		t.Errorf("cleartext server serving h2c: TLS() %v, URL %s", srv.TLS(), srv.URL())
	}
}
