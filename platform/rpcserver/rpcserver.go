// Package rpcserver serves Connect handlers on one cleartext port that speaks
// both HTTP/1.1 and HTTP/2 with prior knowledge (h2c), so gRPC, gRPC-Web and
// the Connect protocol (JSON and binary, POST and GET) share one listener.
//
// It also holds the HTTP-level protections every Flux-KV API port applies:
// request body limits that leave client streams alone, and CORS for browsers.
package rpcserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Server is an HTTP server bound to a listener. Create it with Listen, run it
// with Serve and stop it with Shutdown.
type Server struct {
	http    *http.Server
	ln      net.Listener
	workers *workers

	closeOnce sync.Once
}

// Listen binds addr (host:port; port 0 picks a free one) and returns a server
// that will serve handler on it once Serve is called. The caller must call
// Shutdown or Close to release the listener.
func Listen(addr string, handler http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	pool := newWorkers(handler)
	srv := &http.Server{
		Handler:   pool,
		Protocols: &protocols,
		// Slow-header clients must not hold connections open forever; bodies are
		// left unbounded in time because streams legitimately last long.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	return &Server{http: srv, ln: bufferedListener{ln}, workers: pool}, nil
}

// Addr is the address the server listens on, with the port resolved.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the base URL clients use to reach the server.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

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
