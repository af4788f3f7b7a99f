// Package tlsfiles builds the TLS configurations of Flux-KV's servers and
// clients from PEM files, and reloads them in place, so certificates are
// rotated without a restart.
//
// A server presents the certificate of Files.Cert and Files.Key; with
// Files.CA it requires every client to present a certificate signed by one
// of the CAs in that bundle (mutual TLS). A client verifies servers against
// Files.CA (the system's roots when empty) and, with Files.Cert and
// Files.Key, presents its own certificate.
//
// Reload reads every file again and switches to the result only if all of
// it loads: a half-written file leaves the old configuration in force.
// Connections already made keep the certificate they were made with.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// Files names the PEM files of one side of a TLS connection. Empty fields
// are not used.
type Files struct {
	Cert string // certificate chain, leaf first
	Key  string // private key of the leaf
	CA   string // bundle of CA certificates that sign the other side's certificates
}

// IsZero reports whether no file is named.
func (f Files) IsZero() bool { return f == Files{} }

// Config is a loaded set of files whose TLS configurations follow Reload.
type Config struct {
	files  Files
	loaded atomic.Pointer[loaded]
}

type loaded struct {
	cert *tls.Certificate // nil without Files.Cert
	cas  *x509.CertPool   // nil without Files.CA
}

// Load reads the files. Cert and Key must be given together.
func Load(f Files) (*Config, error) {
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("a certificate and its key go together: give both files or neither")
	}
	c := &Config{files: f}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload reads the files again. On error the configuration loaded before
// stays in force.
func (c *Config) Reload() error {
	var l loaded
	if c.files.Cert != "" {
		cert, err := tls.LoadX509KeyPair(c.files.Cert, c.files.Key)
		if err != nil {
			return fmt.Errorf("certificate %s with key %s: %w", c.files.Cert, c.files.Key, err)
		}
		l.cert = &cert
	}
	if c.files.CA != "" {
		pem, err := os.ReadFile(c.files.CA)
		if err != nil {
			return fmt.Errorf("CA bundle: %w", err)
		}
		l.cas = x509.NewCertPool()
		if !l.cas.AppendCertsFromPEM(pem) {
			return fmt.Errorf("CA bundle %s: no PEM certificate in it", c.files.CA)
		}
	}
	c.loaded.Store(&l)
	return nil
}

// Files are the files the configuration is read from.
func (c *Config) Files() Files { return c.files }

// Server returns the configuration of a server: TLS 1.2 at least, the
// certificate as last loaded and, with a CA bundle, client certificates
// required and verified against it as last loaded. nextProtos is offered
// in ALPN.
func (c *Config) Server(nextProtos ...string) (*tls.Config, error) {
	if c.files.Cert == "" {
		return nil, errors.New("a server needs a certificate and its key")
	}
	base := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: nextProtos}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: nextProtos,
		// Each handshake takes the files as last loaded.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			l := c.loaded.Load()
			cfg := base.Clone()
			cfg.Certificates = []tls.Certificate{*l.cert}
			if l.cas != nil {
				cfg.ClientAuth = tls.RequireAndVerifyClientCert
				cfg.ClientCAs = l.cas
			}
			return cfg, nil
		},
	}, nil
}

// Client returns the configuration of a client: TLS 1.2 at least, servers
// verified against the CA bundle (the system's roots without one) as
// loaded when Client is called, and the client certificate as last loaded,
// if any.
func (c *Config) Client() *tls.Config {
	l := c.loaded.Load()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: l.cas}
	if l.cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.loaded.Load().cert, nil
		}
	}
	return cfg
}
