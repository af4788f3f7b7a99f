package rpcserver

import (
	"fmt"
	"net"
	"os"
)

// Advertise returns the addresses other processes should dial to reach the
// API and admin listeners, for registering in etcd. advertise, if set, is
// the API's host:port as others see it (a container's service name, say);
// the admin address then takes its host. Otherwise a listener on an
// unspecified address (0.0.0.0, ::) is advertised under the host name,
// since nobody can dial "0.0.0.0" from another host; a listener on a
// specific address as itself.
func Advertise(advertise string, api, admin net.Addr) (apiAddr, adminAddr string, err error) {
	host := ""
	if advertise != "" {
		h, _, err := net.SplitHostPort(advertise)
		if err != nil {
			return "", "", fmt.Errorf("advertise address %q: want host:port: %w", advertise, err)
		}
		host = h
	}
	apiAddr, err = dialable(api, host)
	if err != nil {
		return "", "", err
	}
	if advertise != "" {
		apiAddr = advertise
	}
	adminAddr, err = dialable(admin, host)
	return apiAddr, adminAddr, err
}

// dialable is addr with its host replaced by host if set, or by the host
// name when addr's host is unspecified.
func dialable(addr net.Addr, host string) (string, error) {
	h, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "", err
	}
	if host != "" {
		return net.JoinHostPort(host, port), nil
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
		name, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("listening on %s: advertise the host name: %w", addr, err)
		}
		return net.JoinHostPort(name, port), nil
	}
	return addr.String(), nil
}
