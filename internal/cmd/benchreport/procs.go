package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	buildTimeout  = 5 * time.Minute
	healthTimeout = 60 * time.Second
	stopTimeout   = 20 * time.Second
)

// buildFlux builds the flux binary into dir once, so every case runs the
// same build and no case pays for compiling.
func buildFlux(ctx context.Context, root, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	bin := filepath.Join(dir, "flux")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/flux")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build flux: %w", err)
	}
	return bin, nil
}

// freePort returns a loopback port that was free a moment ago: the kernel
// picks it for a listener that is closed at once, so the server started
// next can bind it.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freeAddr() (string, error) {
	p, err := freePort()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(p), nil
}

// server is one running flux process (a node, or a dev cluster).
type server struct {
	name     string
	cmd      *exec.Cmd
	logPath  string
	endpoint string // API URL clients use
	admin    string // admin URL, when known
	donec    chan struct{}
	err      error // of Wait, once donec is closed
}

// procs tracks every process the report starts, so none outlives it.
type procs struct {
	flux    string // path of the flux binary
	dir     string // where data directories and logs go
	running []*server
	n       int
}

// start runs flux with args, its output going to a log file, and waits
// until `flux health` passes on endpoint. If the process does not become
// healthy, it is stopped and the error carries the end of its log.
func (p *procs) start(ctx context.Context, name, endpoint string, args ...string) (*server, error) {
	p.n++
	logPath := filepath.Join(p.dir, fmt.Sprintf("%02d-%s.log", p.n, name))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer logFile.Close()
	cmd := exec.Command(p.flux, args...)
	cmd.Env, cmd.SysProcAttr = cleanEnv(), childAttr()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, logPath: logPath, endpoint: endpoint, donec: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.donec)
	}()
	p.running = append(p.running, s)
	if err := p.waitHealthyAt(ctx, s, endpoint); err != nil {
		_ = p.stop(s)
		return nil, fmt.Errorf("%s did not become healthy: %w\n%s", name, err, logTail(logPath))
	}
	return s, nil
}

// waitHealthyAt runs `flux health` against endpoint, served by s, until it
// passes, the process exits, or healthTimeout passes.
func (p *procs) waitHealthyAt(ctx context.Context, s *server, endpoint string) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	for {
		check, checkCancel := context.WithTimeout(ctx, 5*time.Second)
		cmd := exec.CommandContext(check, p.flux, "health", "--endpoint", endpoint, "--timeout", "2s")
		cmd.Env = cleanEnv()
		err := cmd.Run()
		checkCancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.donec:
			return fmt.Errorf("exited: %v", s.err)
		case <-ctx.Done():
			return fmt.Errorf("flux health --endpoint %s: %v (%w)", endpoint, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for the process to exit, killing it after
// stopTimeout. It fails if the process had already exited (it crashed
// during the case) or exits with an error; stopping it again does nothing.
func (p *procs) stop(s *server) error {
	i := slices.Index(p.running, s)
	if i < 0 {
		return nil
	}
	p.running = slices.Delete(p.running, i, i+1)
	select {
	case <-s.donec:
		return fmt.Errorf("%s exited before it was stopped: %v\n%s", s.name, s.err, logTail(s.logPath))
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.donec:
		if s.err != nil {
			return fmt.Errorf("stop %s: %w\n%s", s.name, s.err, logTail(s.logPath))
		}
		return nil
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.donec
		return fmt.Errorf("stop %s: still running %s after SIGTERM; killed", s.name, stopTimeout)
	}
}

// stopAll stops every process still running, newest first.
func (p *procs) stopAll() {
	for len(p.running) > 0 {
		s := p.running[len(p.running)-1]
		if err := p.stop(s); err != nil {
			fmt.Fprintf(os.Stderr, "benchreport: %v\n", err)
		}
	}
}

// logTail returns the last lines of a process log, for error messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return fmt.Sprintf("last lines of %s:\n%s", path, strings.Join(lines, "\n"))
}
