// Package etcdembed runs a single-member etcd inside the process: the
// coordination service of `flux dev` and of tests that need a real etcd.
// Other processes (etcdctl, more nodes) can join it on its client URL.
package etcdembed

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	clientURL string
}

// Option configures Start.
type Option func(*embed.Config)

// WithClientTLS serves clients over TLS only, with the certificate and key
// in these PEM files; the client URL must then be https://. With caFile,
// every client must present a certificate signed by a CA in it.
func WithClientTLS(certFile, keyFile, caFile string) Option {
	return func(cfg *embed.Config) {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       certFile,
			KeyFile:        keyFile,
			TrustedCAFile:  caFile,
			ClientCertAuth: caFile != "",
		}
	}
}

// Start runs etcd with its data in dir, serving clients on clientURL (for
// example http://127.0.0.1:2379; port 0 picks a free port). It returns once
// etcd serves, or an error within 30 seconds.
func Start(dir, clientURL string, opts ...Option) (*Server, error) {
	cu, err := url.Parse(clientURL)
	if err != nil {
		return nil, fmt.Errorf("etcd client url %q: %w", clientURL, err)
	}
	if cu.Scheme != "http" && cu.Scheme != "https" {
		return nil, fmt.Errorf("etcd client url %q: want http:// or https://", clientURL)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create etcd dir: %w", err)
	}
	// The peer port is picked before etcd binds it, so another process can
	// take it in between: try a few ports before giving up.
	for attempt := 1; ; attempt++ {
		srv, err := start(dir, cu, opts)
		if err == nil || attempt == 3 || !errors.Is(err, syscall.EADDRINUSE) {
			return srv, err
		}
	}
}

func start(dir string, cu *url.URL, opts []Option) (*Server, error) {
	peer, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "flux"
	cfg.Dir = dir
	// etcd logs each listener it closes on a clean shutdown at error level;
	// its log goes to a file beside its data, and failures reach the caller
	// through Start's error.
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Keep the history a restarted watcher needs, without growing forever.
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "10000"
	for _, opt := range opts {
		opt(cfg)
	}
	if (cu.Scheme == "https") != !cfg.ClientTLSInfo.Empty() {
		return nil, fmt.Errorf("etcd client url %s: https:// goes with WithClientTLS, http:// without", cu)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s did not become ready in 30s", dir)
	}
	return &Server{etcd: e, clientURL: cu.Scheme + "://" + e.Clients[0].Addr().String()}, nil
}

// ClientURL is the URL clients connect to, with the port resolved.
func (s *Server) ClientURL() string { return s.clientURL }

// Close stops etcd. Its data stays in the directory for the next Start.
func (s *Server) Close() { s.etcd.Close() }

// freeLoopbackURL finds a free port for etcd's peer listener, which a
// single-member cluster needs but nobody dials.
func freeLoopbackURL() (*url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("find a port for etcd: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return nil, err
	}
	return &url.URL{Scheme: "http", Host: addr}, nil
}
