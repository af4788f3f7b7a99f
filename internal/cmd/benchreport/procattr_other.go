//go:build !linux

package main

import "syscall"

// childAttr is nil where there is no parent-death signal: the deferred
// stops are all that end the servers.
func childAttr() *syscall.SysProcAttr { return nil }
