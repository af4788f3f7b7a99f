package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDevRequiresTokens: flux dev --auth-file refuses calls without a valid
// token over every protocol, refuses writes to a read token, takes them
// from a write token (the nodes forward them to each other with their own
// token), and flux token new makes tokens the file accepts.
func TestDevRequiresTokens(t *testing.T) {
	t.Parallel()
	newToken := func(scope string) string {
		got := flux("", "token", "new", "--scope", scope, "--name", scope+"-test")
		if got.code != exitOK {
			t.Fatalf("flux token new: %+v", got)
		}
		line := strings.TrimSpace(got.stderr[strings.LastIndex(strings.TrimSpace(got.stderr), "\n")+1:])
		if !strings.HasPrefix(line, scope+" sha256:") || strings.Contains(line, strings.TrimSpace(got.stdout)) {
			t.Fatalf("flux token new: the file line %q", line)
		}
		return strings.TrimSpace(got.stdout) + "\n" + line
	}
	read, write := newToken("read"), newToken("write")
	readTok, readLine, _ := strings.Cut(read, "\n")
	writeTok, writeLine, _ := strings.Cut(write, "\n")
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(readLine+"\n"+writeLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gw, _ := startDev(t, "--auth-file", path)
	for _, protocol := range []string{"connect", "grpc", "grpcweb"} {
		base := []string{"--endpoint", gw, "--protocol", protocol}
		put := func(key string, extra ...string) result {
			return flux("", append(append([]string{"put", key, "v"}, base...), extra...)...)
		}
		if got := put("k-" + protocol); got.code != exitError || !strings.Contains(got.stderr, "unauthenticated") {
			t.Errorf("%s put without a token: %+v, want unauthenticated", protocol, got)
		}
		if got := put("k-"+protocol, "--token", "flux_not-a-token"); got.code != exitError || !strings.Contains(got.stderr, "unauthenticated") {
			t.Errorf("%s put with an unknown token: %+v, want unauthenticated", protocol, got)
		}
		if got := put("k-"+protocol, "--token", readTok); got.code != exitError || !strings.Contains(got.stderr, "permission_denied") {
			t.Errorf("%s put with a read token: %+v, want permission_denied", protocol, got)
		}
		// Keys on every node: the gateway's node forwards to the owner.
		for i := range 6 {
			key := "k-" + protocol + "-" + string(rune('a'+i))
			if got := put(key, "--token", writeTok); got.code != exitOK {
				t.Errorf("%s put %s with a write token: %+v", protocol, key, got)
			}
			if got := flux("", append([]string{"get", key, "--token", readTok}, base...)...); got.code != exitOK || got.stdout != "v\n" {
				t.Errorf("%s get %s with a read token: %+v", protocol, key, got)
			}
		}
		// Refusals never show the token they refused.
		for _, tok := range []string{readTok, "flux_not-a-token"} {
			if got := put("x", "--token", tok); got.code == exitOK || strings.Contains(got.stderr, tok) {
				t.Errorf("%s: a refusal %+v shows the token, or there was none", protocol, got)
			}
		}
	}
	if got := flux("", "health", "--endpoint", gw); got.code != exitOK {
		t.Errorf("health without a token: %+v, want open", got)
	}
}
