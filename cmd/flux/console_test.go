package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/internal/authtest"
	"github.com/fluxkv/fluxkv/platform/auth"
)

// TestWebConsole drives the web console in a real Chromium against
// `flux dev`'s gateway, over gRPC-Web and over Connect:
// web/test/console.test.mjs lists keys a page at a time, shows values as
// JSON, text and hex, edits and puts keys through the console without
// changing their bytes, follows the live feed (only while it is on screen)
// across a tab switch, a hidden page, a dropped connection and a pause
// without losing or repeating a change, deletes a key, shows validation
// errors under their fields and reads the cluster view. It needs Node, the
// npm dependencies (npm ci at the repository root, which installs
// playwright-core) and Chromium (/usr/bin/chromium, or $CHROMIUM); without
// them it skips, except in CI, where .ci/run installs them and a missing
// one is a failure.
//
// Screenshots of every view go to a temporary directory; with -update,
// the one of the keys view replaces docs/console.png.
func TestWebConsole(t *testing.T) {
	b := newConsoleBrowser(t)
	gateway, _ := startDev(t)
	shots := b.run(t, gateway)
	if *update {
		png, err := os.ReadFile(filepath.Join(shots, "console.png"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(b.root, "docs", "console.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWebConsoleTokens drives the console against `flux dev --auth-file`,
// over gRPC-Web and over Connect: without a token it says one is needed;
// with a read token it reads keys and its puts are refused for the
// token's scope; with a write token, given in the header's field or in a
// #token= link (which the address bar then no longer shows), it writes;
// the token lasts for the tab only, Forget drops it, and no token ever
// shows in the page. It needs what TestWebConsole needs.
func TestWebConsoleTokens(t *testing.T) {
	b := newConsoleBrowser(t)
	path, tokens := authtest.TokenFile(t, auth.ScopeRead, auth.ScopeWrite)
	gateway, _ := startDev(t, "--auth-file", path)
	// The tokens travel in the environment, out of the process list.
	b.run(t, gateway, "FLUX_TEST_READ_TOKEN="+tokens[auth.ScopeRead], "FLUX_TEST_WRITE_TOKEN="+tokens[auth.ScopeWrite])
}

// consoleBrowser is what the browser tests run with: the repository, Node
// and Chromium.
type consoleBrowser struct {
	root     string // the repository's root, where node_modules is
	node     string
	chromium string
}

// newConsoleBrowser finds Node, the npm dependencies and Chromium, and
// skips the test when one is missing, except in CI, where .ci/run installs
// them and a missing one fails it.
func newConsoleBrowser(t *testing.T) consoleBrowser {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a dev cluster and a browser")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	node, err := exec.LookPath("node")
	for _, need := range []string{filepath.Join(root, "node_modules", "playwright-core", "package.json"), chromium} {
		if err == nil {
			_, err = os.Stat(need)
		}
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the browser test cannot run (%v): install node and chromium, and run npm ci at the repository root", err)
		}
		t.Skipf("the browser test cannot run (%v); it needs node, chromium and npm ci at the repository root", err)
	}
	return consoleBrowser{root: root, node: node, chromium: chromium}
}

// run runs web/test/console.test.mjs against gateway, with env added to
// the test's environment, fails the test if the script does, and returns
// the directory holding its screenshots.
func (b consoleBrowser) run(t *testing.T, gateway string, env ...string) (shots string) {
	t.Helper()
	shots = t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.node, filepath.Join("web", "test", "console.test.mjs"), gateway, shots)
	cmd.Dir = b.root
	cmd.Env = append(append(environWithout("FLUX_TEST_READ_TOKEN", "FLUX_TEST_WRITE_TOKEN"), "CHROMIUM="+b.chromium), env...)
	// On timeout the script gets SIGTERM, on which Playwright closes
	// Chromium before the script exits; one that has not exited a while
	// later is killed, and Chromium, reading its end of a pipe to the
	// script, exits with it. Either way no browser outlives the test.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("web/test/console.test.mjs:\n%s", strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("the browser test failed: %v (run by hand, node web/test/console.test.mjs GATEWAY_URL DIR keeps its screenshots)", err)
	}
	return shots
}
