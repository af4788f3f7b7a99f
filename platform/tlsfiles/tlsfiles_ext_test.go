package tlsfiles_test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/internal/testcerts"
	"github.com/fluxkv/fluxkv/platform/tlsfiles"
)

// serve accepts TLS connections with cfg until the test ends, completing
// each handshake and closing the connection.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// handshake dials addr with cfg and returns the server's leaf certificate
// and the negotiated protocol.
func handshake(addr string, cfg *tls.Config) (*x509.Certificate, string, error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, "", err
	}
	defer c.Close()
	// TLS 1.3 reports a refused client certificate on the first read.
	if _, err := c.Read(make([]byte, 1)); err != nil && !strings.Contains(err.Error(), "EOF") {
		return nil, "", err
	}
	st := c.ConnectionState()
	return st.PeerCertificates[0], st.NegotiatedProtocol, nil
}

func TestServerAndClient(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA(t, "flux-test")
	server := ca.Server("node")
	client := ca.Client("cli")
	rogue := testcerts.NewCA(t, "rogue").Client("intruder")

	// TLS only: any client that trusts the CA gets in, with ALPN.
	plain, err := tlsfiles.Load(tlsfiles.Files{Cert: server.Cert, Key: server.Key})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := plain.Server("h2", "http/1.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, cfg)
	trusting, err := tlsfiles.Load(tlsfiles.Files{CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	clientCfg := trusting.Client()
	clientCfg.NextProtos = []string{"h2"}
	if leaf, proto, err := handshake(addr, clientCfg); err != nil || leaf.Subject.CommonName != "node" || proto != "h2" {
		t.Fatalf("handshake: %v, %v, %q; want node's certificate and h2", err, leaf, proto)
	}
	// A client that does not trust the CA refuses the server.
	if _, _, err := handshake(addr, &tls.Config{MinVersion: tls.VersionTLS12}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("handshake without the CA: %v, want a certificate error", err)
	}
	// Older than TLS 1.2 is refused.
	if _, _, err := handshake(addr, &tls.Config{RootCAs: ca.Pool(), MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("TLS 1.1 handshake succeeded")
	}

	// Mutual TLS: only clients with a certificate the CA signed get in.
	mutual, err := tlsfiles.Load(tlsfiles.Files{Cert: server.Cert, Key: server.Key, CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = mutual.Server()
	if err != nil {
		t.Fatal(err)
	}
	addr = serve(t, cfg)
	if _, _, err := handshake(addr, trusting.Client()); err == nil {
		t.Error("mutual TLS: a client without a certificate got in")
	}
	withRogue := &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{rogue.TLS}}
	if _, _, err := handshake(addr, withRogue); err == nil {
		t.Error("mutual TLS: a client with a certificate of another CA got in")
	}
	withCert, err := tlsfiles.Load(tlsfiles.Files{CA: ca.File, Cert: client.Cert, Key: client.Key})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := handshake(addr, withCert.Client()); err != nil {
		t.Errorf("mutual TLS with a signed client certificate: %v", err)
	}
}

func TestReload(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA(t, "flux-test")
	first, second := ca.Server("first"), ca.Server("second")
	// The server reads its own copies of the files, so the test can
	// replace them.
	dir := t.TempDir()
	certFile, keyFile := dir+"/cert.pem", dir+"/key.pem"
	install := func(p testcerts.Pair) {
		t.Helper()
		for src, dst := range map[string]string{p.Cert: certFile, p.Key: keyFile} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(first)
	c, err := tlsfiles.Load(tlsfiles.Files{Cert: certFile, Key: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := c.Server()
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, cfg)
	client := &tls.Config{RootCAs: ca.Pool()}
	served := func() string {
		t.Helper()
		leaf, _, err := handshake(addr, client)
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Subject.CommonName
	}
	if got := served(); got != "first" {
		t.Fatalf("served %q, want first", got)
	}
	// Files replaced: nothing changes until Reload.
	install(second)
	if got := served(); got != "first" {
		t.Fatalf("before Reload: served %q, want first", got)
	}
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := served(); got != "second" {
		t.Fatalf("after Reload: served %q, want second", got)
	}
	// A key that does not match the certificate is refused, and the
	// certificate loaded before stays.
	b, err := os.ReadFile(first.Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(); err == nil {
		t.Fatal("Reload of a certificate with another's key: nil error")
	}
	if got := served(); got != "second" {
		t.Fatalf("after a failed Reload: served %q, want second", got)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA(t, "flux-test")
	pair := ca.Server("node")
	notPEM := t.TempDir() + "/empty.pem"
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		files tlsfiles.Files
		want  string
	}{
		{tlsfiles.Files{Cert: pair.Cert}, "give both files or neither"},
		{tlsfiles.Files{Key: pair.Key}, "give both files or neither"},
		{tlsfiles.Files{Cert: pair.Cert, Key: t.TempDir() + "/missing.pem"}, "no such file"},
		{tlsfiles.Files{CA: notPEM}, "no PEM certificate"},
		{tlsfiles.Files{CA: t.TempDir() + "/missing.pem"}, "no such file"},
	} {
		if _, err := tlsfiles.Load(tt.files); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load(%+v): %v, want an error containing %q", tt.files, err, tt.want)
		}
	}
	caOnly, err := tlsfiles.Load(tlsfiles.Files{CA: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := caOnly.Server(); err == nil {
		t.Error("Server without a certificate: nil error")
	}
}

var _ net.Conn = (*tls.Conn)(nil)
