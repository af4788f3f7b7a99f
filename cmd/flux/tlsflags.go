package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net/http"

	"github.com/fluxkv/fluxkv/platform/tlsfiles"
)

// clientTLSFlags are the TLS flags of the client commands: how to verify
// https:// endpoints and etcd, and the certificates to present to servers
// that require one.
type clientTLSFlags struct {
	api, etcd tlsfiles.Files
}

func (f *clientTLSFlags) registerAPI(fs *flag.FlagSet) {
	fs.StringVar(&f.api.CA, "tls-ca", "", "CA bundle `file` (PEM) to verify https:// endpoints and nodes serving TLS with (default: the system's roots)")
	fs.StringVar(&f.api.Cert, "tls-cert", "", "client certificate `file` (PEM) to present to servers that require one (mutual TLS); with --tls-key")
	fs.StringVar(&f.api.Key, "tls-key", "", "private key `file` (PEM) of --tls-cert")
}

func (f *clientTLSFlags) registerEtcd(fs *flag.FlagSet) {
	fs.StringVar(&f.etcd.CA, "etcd-tls-ca", "", "CA bundle `file` (PEM) to verify etcd with, for https:// --etcd endpoints (default: the system's roots)")
	fs.StringVar(&f.etcd.Cert, "etcd-tls-cert", "", "client certificate `file` (PEM) to present to etcd; with --etcd-tls-key")
	fs.StringVar(&f.etcd.Key, "etcd-tls-key", "", "private key `file` (PEM) of --etcd-tls-cert")
}

// apiTLS is the configuration for https:// endpoints and nodes; nil when
// no flag is given (Go's defaults: the system's roots, TLS 1.2 at least).
func (f *clientTLSFlags) apiTLS() (*tls.Config, error) {
	return clientTLS("--tls-ca, --tls-cert, --tls-key", f.api)
}

// etcdTLS is the configuration for etcd; nil when no flag is given.
func (f *clientTLSFlags) etcdTLS() (*tls.Config, error) {
	return clientTLS("--etcd-tls-*", f.etcd)
}

func clientTLS(flags string, files tlsfiles.Files) (*tls.Config, error) {
	if files.IsZero() {
		return nil, nil
	}
	c, err := tlsfiles.Load(files)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errUsage, flags, err)
	}
	return c.Client(), nil
}

// httpClient speaks HTTP/2 to every endpoint: with prior knowledge (h2c) on
// http:// URLs, which gRPC needs, and negotiated by TLS on https:// URLs.
func (f *clientTLSFlags) httpClient() (*http.Client, error) {
	cfg, err := f.apiTLS()
	if err != nil {
		return nil, err
	}
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols:       &protocols,
		TLSClientConfig: cfg,
		Proxy:           http.ProxyFromEnvironment,
	}}, nil
}
