// Package rpcserver serves Connect handlers on one port that speaks both
// HTTP/1.1 and HTTP/2, so gRPC, gRPC-Web and the Connect protocol (JSON and
// binary, POST and GET) share one listener: in cleartext, HTTP/2 with prior
// knowledge (h2c); over TLS, HTTP/2 or HTTP/1.1 as ALPN negotiates.
//
// It also holds the HTTP-level protections every Flux-KV API port applies:
// request body limits that leave client streams alone, bounds on headers,
// streams and slow clients (Limits), and CORS for browsers.
package rpcserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Defaults of the Limits fields left at zero.
const (
	// DefaultMaxConcurrentStreams is HTTP/2's customary bound on the calls
	// in flight on one connection (Go's own default too).
	DefaultMaxConcurrentStreams = 250
	// DefaultMaxHeaderBytes bounds a request's headers: far above what any
	// RPC sends (a bearer token, a trace context, a few metadata entries),
	// far below Go's 1 MiB default.
	DefaultMaxHeaderBytes = 64 << 10
	// DefaultReadHeaderTimeout is how long a client may take to send a
	// request's headers (a slow-header client, "slowloris", is cut off).
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout closes connections with no call in flight.
	DefaultIdleTimeout = 2 * time.Minute
)

// Limits bound what one client connection may hold of the server. Zero
// fields take the defaults above. Bodies are left unbounded in time because
// streams legitimately last long; their size is bounded per message by the
// handlers and, for unary calls, by LimitRequestBodies.
type Limits struct {
	MaxConcurrentStreams uint32        // HTTP/2 streams (calls) in flight per connection; more are refused
	MaxHeaderBytes       int           // request headers, HTTP/1.1 and HTTP/2 alike
	ReadHeaderTimeout    time.Duration // time to read a request's headers
	IdleTimeout          time.Duration // an idle connection is closed after this
}

func (l *Limits) setDefaults() {
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
}

// alpn is what a TLS server offers: HTTP/2 first.
var alpn = []string{"h2", "http/1.1"}

// Options configure a server. The zero value serves cleartext with the
// default limits.
type Options struct {
	// TLS, when set, serves TLS only, with ALPN offering h2 and http/1.1;
	// it must hold a certificate (Certificates or GetCertificate). Its
	// ClientAuth and ClientCAs decide whether clients need certificates.
	TLS    *tls.Config
	Limits Limits
	// Logger receives the HTTP server's own errors (failed TLS handshakes,
	// malformed requests) at debug level: clients cause them, and scanners
	// on an exposed port would flood a higher level. Nil discards them.
	Logger *slog.Logger
}

// Server is an HTTP server bound to a listener. Create it with Listen, run it
// with Serve and stop it with Shutdown.
type Server struct {
	http *http.Server
	ln   net.Listener
	// tls is whether Listen was given a TLS configuration: the
	// http.Server's own TLSConfig is not a witness, since net/http fills
	// it in when it sets up HTTP/2.
	tls     bool
	workers *workers

	closeOnce sync.Once
}

// Listen binds addr (host:port; port 0 picks a free one) and returns a server
// that will serve handler on it once Serve is called. The caller must call
// Shutdown or Close to release the listener.
func Listen(addr string, handler http.Handler, opts Options) (*Server, error) {
	limits := opts.Limits
	limits.setDefaults()
	var tlsConfig *tls.Config
	if opts.TLS != nil {
		if len(opts.TLS.Certificates) == 0 && opts.TLS.GetCertificate == nil && opts.TLS.GetConfigForClient == nil {
			return nil, fmt.Errorf("listen on %s: TLS configuration without a certificate", addr)
		}
		tlsConfig = opts.TLS.Clone()
		if tlsConfig.MinVersion < tls.VersionTLS12 {
			tlsConfig.MinVersion = tls.VersionTLS12
		}
		// gRPC needs HTTP/2; browsers and curl may speak either.
		tlsConfig.NextProtos = alpn
		if get := tlsConfig.GetConfigForClient; get != nil {
			tlsConfig.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				cfg, err := get(hello)
				if err != nil || cfg == nil {
					return cfg, err
				}
				cfg = cfg.Clone()
				cfg.NextProtos = alpn
				return cfg, nil
			}
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if tlsConfig != nil {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	pool := newWorkers(handler)
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		Handler:           pool,
		Protocols:         &protocols,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: limits.ReadHeaderTimeout,
		IdleTimeout:       limits.IdleTimeout,
		MaxHeaderBytes:    limits.MaxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: int(limits.MaxConcurrentStreams),
			// HPACK's dynamic table is what the decoder must hold per
			// connection; the header list bound comes from MaxHeaderBytes.
			MaxDecoderHeaderTableSize: 4096,
		},
	}
	var served net.Listener = bufferedListener{ln}
	if tlsConfig != nil {
		// TLS sits above the read buffer, so a record spread over several
		// TCP segments still takes few system calls.
		served = tls.NewListener(served, tlsConfig)
	}
	return &Server{http: srv, ln: served, tls: tlsConfig != nil, workers: pool}, nil
}

// Addr is the address the server listens on, with the port resolved.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the base URL clients use to reach the server: https:// when it
// serves TLS.
func (s *Server) URL() string {
	if s.TLS() {
		return "https://" + s.ln.Addr().String()
	}
	return "http://" + s.ln.Addr().String()
}

// TLS reports whether the server serves TLS.
func (s *Server) TLS() bool { return s.tls }

// Serve accepts connections until Shutdown or Close is called. It returns nil
// after a requested stop and the accept error otherwise.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// Shutdown stops accepting connections and waits for in-flight requests to
// finish. If ctx ends first, it closes the remaining connections, which ends
// open streams, and returns ctx's error. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	s.workers.Close()
	if err != nil {
		s.Close()
		return fmt.Errorf("graceful shutdown of %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// Close stops the server at once, closing the listener and every connection.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		_ = s.http.Close()
		_ = s.ln.Close()
		s.workers.Close()
	})
}
