package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWebConsole drives the web console in a real Chromium against
// `flux dev`'s gateway: web/test/console.test.mjs puts a key through the
// console and sees it listed, changes it through the API and sees the live
// feed update (also across a dropped connection and a pause), deletes it
// through the console, gets the validation error for an empty key and
// reads the cluster view. It needs Node, the npm dependencies (npm ci at
// the repository root, which installs playwright-core) and Chromium
// (/usr/bin/chromium, or $CHROMIUM); without them it skips, except in CI,
// where .ci/run installs them and a missing one is a failure.
//
// Screenshots of every view go to web/test/screenshots (git-ignored); with
// -update, the one of the keys view also replaces docs/console.png.
func TestWebConsole(t *testing.T) {
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

	gateway, _ := startDev(t)
	shots := filepath.Join(root, "web", "test", "screenshots")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join("web", "test", "console.test.mjs"), gateway, shots)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CHROMIUM="+chromium)
	out, err := cmd.CombinedOutput()
	t.Logf("web/test/console.test.mjs:\n%s", strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("the browser test failed: %v (screenshots in %s)", err, shots)
	}
	if *update {
		png, err := os.ReadFile(filepath.Join(shots, "console.png"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "docs", "console.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
