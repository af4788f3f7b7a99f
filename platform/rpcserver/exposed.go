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

// WarnExposed logs, loudly, each of a server's listeners that other hosts
// can reach while it speaks plaintext, unless insecure says the operator
// knows: requests, values and bearer tokens cross the network in the
// clear, and the admin port (metrics, pprof) answers anyone.
func WarnExposed(logger *slog.Logger, insecure bool, api, admin net.Addr) {
	if insecure {
		return
	}
	if Exposed(api) {
		logger.Warn("PLAINTEXT API PORT REACHABLE FROM OTHER HOSTS: requests, values and bearer tokens cross the network unencrypted "+
			"(TLS is not built yet); keep it on a trusted network or behind a TLS proxy, and pass --insecure to acknowledge",
			slog.String("listen", api.String()))
	}
	if Exposed(admin) {
		logger.Warn("ADMIN PORT REACHABLE FROM OTHER HOSTS: /metrics and /debug/pprof/ answer anyone, without a token; "+
			"keep --admin-listen on loopback or a private network, or pass --insecure to acknowledge",
			slog.String("admin_listen", admin.String()))
	}
}
