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

// TestTypeScriptExample runs the TypeScript SDK's example under Node with
// each protocol against `flux dev`'s gateway, and compares what it prints
// with the output docs/sdk-typescript.md shows. It needs Node and the SDK's
// npm dependencies (npm ci at the repository root); without them it skips, except
// in CI, where .ci/run installs them and a missing one is a failure.
func TestTypeScriptExample(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dev cluster and Node")
	}
	sdk, err := filepath.Abs("../../sdk/ts")
	if err != nil {
		t.Fatal(err)
	}
	tsx := filepath.Join(sdk, "..", "..", "node_modules", ".bin", "tsx")
	if _, err := os.Stat(tsx); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the TypeScript SDK's dependencies are missing (%v); run npm ci at the repository root", err)
		}
		t.Skipf("the TypeScript SDK's dependencies are missing; run npm ci at the repository root")
	}
	want := documentedOutput(t)

	gateway, _ := startDev(t)
	for _, protocol := range []string{"connect", "grpc", "grpcweb"} {
		t.Run(protocol, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, tsx, "examples/quickstart.ts", gateway, protocol)
			cmd.Dir = sdk
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("the example failed: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
			}
			if got := strings.TrimSpace(string(out)); got != want {
				t.Errorf("the example printed:\n%s\ndocs/sdk-typescript.md says:\n%s", got, want)
			}
		})
	}
}

// documentedOutput returns the text block of docs/sdk-typescript.md that
// shows what the example prints.
func documentedOutput(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../../docs/sdk-typescript.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	_, after, ok := strings.Cut(doc, "## Run the example")
	if !ok {
		t.Fatal(`docs/sdk-typescript.md has no "## Run the example" section`)
	}
	_, block, ok := strings.Cut(after, "```text\n")
	if !ok {
		t.Fatal("docs/sdk-typescript.md shows no output block for the example")
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatal("docs/sdk-typescript.md's output block is not closed")
	}
	return strings.TrimSpace(block)
}
