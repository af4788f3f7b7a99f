package rpcserver_test

import (
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/platform/rpcserver"
)

func TestExposed(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7701": false,
		"[::1]:7701":     false,
		"127.0.0.2:80":   false,
		"0.0.0.0:7701":   true,
		"[::]:7701":      true,
		"10.0.0.5:7701":  true,
	} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := rpcserver.Exposed(a); got != want {
			t.Errorf("Exposed(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestWarnExposed(t *testing.T) {
	loopback, _ := net.ResolveTCPAddr("tcp", "127.0.0.1:7701")
	all, _ := net.ResolveTCPAddr("tcp", "0.0.0.0:9701")
	for _, tc := range []struct {
		name       string
		p          rpcserver.Protection
		api, admin net.Addr
		want       []string
	}{
		{"both on loopback", rpcserver.Protection{}, loopback, loopback, nil},
		{"api exposed", rpcserver.Protection{}, all, loopback, []string{"PLAINTEXT API PORT"}},
		{"admin exposed", rpcserver.Protection{}, loopback, all, []string{"ADMIN PORT REACHABLE FROM OTHER HOSTS WITHOUT A TOKEN"}},
		{"both exposed", rpcserver.Protection{}, all, all, []string{"PLAINTEXT API PORT", "WITHOUT A TOKEN"}},
		{"acknowledged", rpcserver.Protection{Insecure: true}, all, all, nil},
		{"TLS, no token file", rpcserver.Protection{TLS: true}, all, all, []string{"WITHOUT A TOKEN"}},
		{"token file, no TLS", rpcserver.Protection{Authenticated: true}, all, all, []string{"PLAINTEXT API PORT", "PLAINTEXT ADMIN PORT"}},
		{"TLS and token file", rpcserver.Protection{TLS: true, Authenticated: true}, all, all, nil},
	} {
		var buf strings.Builder
		rpcserver.WarnExposed(slog.New(slog.NewTextHandler(&buf, nil)), tc.p, tc.api, tc.admin)
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if buf.Len() == 0 {
			lines = nil
		}
		if len(lines) != len(tc.want) {
			t.Errorf("%s: %d warnings, want %d:\n%s", tc.name, len(lines), len(tc.want), buf.String())
			continue
		}
		for i, want := range tc.want {
			if !strings.Contains(lines[i], "level=WARN") || !strings.Contains(lines[i], want) {
				t.Errorf("%s: warning %q, want one about %s", tc.name, lines[i], want)
			}
		}
	}
}
