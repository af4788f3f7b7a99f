package rpcserver_test

import (
	"net"
	"os"
	"testing"

	"github.com/fluxkv/fluxkv/platform/rpcserver"
)

func TestAdvertise(t *testing.T) {
	t.Parallel()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	tests := []struct {
		advertise, api, admin string
		wantAPI, wantAdmin    string
	}{
		{"", "127.0.0.1:7701", "127.0.0.1:9701", "127.0.0.1:7701", "127.0.0.1:9701"},
		{"", "0.0.0.0:7701", "0.0.0.0:9701", net.JoinHostPort(host, "7701"), net.JoinHostPort(host, "9701")},
		{"", "[::]:7701", "127.0.0.1:9701", net.JoinHostPort(host, "7701"), "127.0.0.1:9701"},
		{"node-1:17701", "0.0.0.0:7701", "0.0.0.0:9701", "node-1:17701", "node-1:9701"},
	}
	for i, tt := range tests {
		api, admin, err := rpcserver.Advertise(tt.advertise, tcp(tt.api), tcp(tt.admin))
		if err != nil || api != tt.wantAPI || admin != tt.wantAdmin {
			t.Errorf("#%d: got %s, %s, %v, want %s, %s", i, api, admin, err, tt.wantAPI, tt.wantAdmin)
		}
	}
	if _, _, err := rpcserver.Advertise("node-1", tcp("0.0.0.0:1"), tcp("0.0.0.0:2")); err == nil {
		t.Error("advertise without a port: got nil error")
	}
}
