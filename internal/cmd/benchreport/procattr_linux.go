package main

import "syscall"

// childAttr makes the kernel send SIGTERM to a server when the report dies
// without stopping it (SIGKILL, a crash), so no server outlives it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
