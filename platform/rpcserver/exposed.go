package rpcserver

import (
	"log/slog"
	"net"
)

// Exposed reports whether a listener at addr can be reached from other
// hosts: it is bound to an address that is not loopback (the unspecified
// address, 0.0.0.0 or ::, included).
func Exposed(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return true
	}
	return !tcp.IP.IsLoopback()
}

// Protection is what a server puts in front of its listeners.
type Protection struct {
	TLS           bool // both listeners serve TLS only
	Authenticated bool // a token file guards the API and the admin port
	// Insecure acknowledges plaintext listeners that other hosts reach.
	Insecure bool
}

// WarnExposed logs, loudly, each of a server's listeners that other hosts
// can reach while it is unprotected: a plaintext one (requests, values and
// bearer tokens cross the network in the clear) unless p.Insecure
// acknowledges it, and an admin port without a token file (metrics and
// profiles answer anyone who connects, TLS or not).
func WarnExposed(logger *slog.Logger, p Protection, api, admin net.Addr) {
	if Exposed(api) && !p.TLS && !p.Insecure {
		logger.Warn("PLAINTEXT API PORT REACHABLE FROM OTHER HOSTS: requests, values and bearer tokens cross the network unencrypted; "+
			"serve TLS (--tls-cert, --tls-key), keep it on a trusted network, or pass --insecure to acknowledge",
			slog.String("listen", api.String()))
	}
	if !Exposed(admin) {
		return
	}
	switch {
	case !p.Authenticated && !p.Insecure:
		logger.Warn("ADMIN PORT REACHABLE FROM OTHER HOSTS WITHOUT A TOKEN: /metrics and /debug/pprof/ answer anyone who connects; "+
			"set --auth-file (the admin port then needs an admin token), keep --admin-listen on loopback or a private network, or pass --insecure to acknowledge",
			slog.String("admin_listen", admin.String()))
	case !p.TLS && !p.Insecure:
		logger.Warn("PLAINTEXT ADMIN PORT REACHABLE FROM OTHER HOSTS: admin tokens cross the network unencrypted; "+
			"serve TLS (--tls-cert, --tls-key), keep --admin-listen on a private network, or pass --insecure to acknowledge",
			slog.String("admin_listen", admin.String()))
	}
}
