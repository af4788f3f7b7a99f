package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer that the dev cluster writes while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestREADMEQuickstart follows the README's quickstart: it runs `flux dev`
// (on free ports rather than the documented ones, which another process
// may hold) and then every `./flux` command the quickstart shows, checking
// the exit code and, where the README shows the exact output as a comment,
// the output. Only `watch`, which runs until Ctrl-C, is left out. The
// README cannot rot without this test failing.
func TestREADMEQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dev cluster")
	}
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	start := strings.Index(readme, "## Quickstart")
	end := strings.Index(readme[start+1:], "\n## ")
	if start < 0 || end < 0 {
		t.Fatal("README.md has no Quickstart section")
	}
	section := readme[start : start+1+end]
	if !strings.Contains(section, "go run ./cmd/flux dev") || !strings.Contains(section, "go test ./...") {
		t.Fatal("the quickstart no longer says `go run ./cmd/flux dev` and `go test ./...`")
	}

	gateway, etcd := startDev(t)

	ran := 0
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "./flux ") {
			continue
		}
		command, comment, _ := strings.Cut(line, "#")
		comment = strings.TrimSpace(comment)
		for _, part := range strings.Split(command, "&&") {
			args := strings.Fields(strings.TrimPrefix(strings.TrimSpace(part), "./flux"))
			if len(args) == 0 || args[0] == "watch" || args[0] == "cdc" {
				continue // they run until Ctrl-C
			}
			for i, a := range args {
				if a == "http://127.0.0.1:2379" {
					args[i] = etcd
				}
			}
			if !strings.Contains(part, "--etcd") {
				args = append(args, "--endpoint", gateway)
			}
			got := flux("", args...)
			ran++
			wantCode := exitOK
			if strings.HasPrefix(comment, "exit 1") {
				wantCode = exitNotFound
			}
			if got.code != wantCode {
				t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.TrimSpace(part), got.code, wantCode, got.stdout, got.stderr)
				continue
			}
			// A one-word comment is the exact output.
			if comment != "" && !strings.ContainsAny(comment, " \t") && strings.TrimSpace(got.stdout) != comment {
				t.Errorf("%s: printed %q, the README says %q", strings.TrimSpace(part), got.stdout, comment)
			}
		}
	}
	if ran < 8 {
		t.Errorf("ran only %d commands from the quickstart", ran)
	}
}

// startDev runs `flux dev` in-process on free ports until the test ends and
// returns the URLs of its gateway and etcd.
func startDev(t *testing.T, extra ...string) (gateway, etcd string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(&environment{ctx: ctx, stdin: strings.NewReader(""), stdout: &out, stderr: &errOut}, append([]string{
			"dev", "--data-dir", t.TempDir(), "--base-port", "0", "--admin-base-port", "0",
			"--gateway-listen", "127.0.0.1:0", "--gateway-admin-listen", "127.0.0.1:0",
			"--etcd-listen", "http://127.0.0.1:0", "--log-level", "error",
		}, extra...))
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("flux dev exited %d:\n%s", code, errOut.String())
		}
	})
	gatewayRE := regexp.MustCompile(`gateway\s+(http://\S+)`)
	etcdRE := regexp.MustCompile(`etcd\s+(http://\S+)`)
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(out.String(), "Ctrl-C stops everything") {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("flux dev exited %d before it was up:\n%s", code, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("flux dev did not come up in 60s:\n%s\n%s", out.String(), errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	gw, e := gatewayRE.FindStringSubmatch(out.String()), etcdRE.FindStringSubmatch(out.String())
	if gw == nil || e == nil {
		t.Fatalf("flux dev did not print the gateway and etcd:\n%s", out.String())
	}
	return gw[1], e[1]
}
