package web_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnit runs the console's unit tests, web/test/*.test.ts (how values,
// durations and JSON are read and shown; the resumable Watch), with Node's
// test runner, loading the TypeScript through tsx. They need Node and the
// npm dependencies (npm ci at the repository root); without them the test
// skips, except in CI, where a missing one is a failure.
func TestUnit(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("test", "*.test.ts"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no unit tests in web/test (%v)", err)
	}
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join("..", "node_modules", "tsx", "package.json"))
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the console's unit tests cannot run (%v): install node, and run npm ci at the repository root", err)
		}
		t.Skipf("the console's unit tests cannot run (%v); they need node and npm ci at the repository root", err)
	}
	cmd := exec.CommandContext(t.Context(), node, append([]string{"--import", "tsx", "--test", "--test-reporter", "spec"}, files...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test %s: %v\n%s", strings.Join(files, " "), err, out)
	}
	t.Logf("node --test %s:\n%s", strings.Join(files, " "), out)
}
