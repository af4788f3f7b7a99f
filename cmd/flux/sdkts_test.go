package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/internal/authtest"
	"github.com/fluxkv/fluxkv/platform/auth"
)

// TestTypeScriptExample runs the TypeScript SDK's example under Node with
// each protocol against `flux dev`'s gateway, and against the gateway of a
// `flux dev --auth-file` with a write token in FLUX_TOKEN and without one,
// and compares what it prints with docs/sdk-typescript.md: the output of
// "Run the example", or the refusal "Send a token" shows. It needs Node
// and the SDK's npm dependencies (npm ci at the repository root); without
// them it skips, except in CI, where .ci/run installs them and a missing
// one is a failure.
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
	output := docBlock(t, "## Run the example")
	refusal := docBlock(t, "## Send a token")
	if !strings.Contains(refusal, "unauthenticated") {
		t.Fatalf("docs/sdk-typescript.md shows the refusal without a token as %q, want unauthenticated", refusal)
	}

	open, _ := startDev(t)
	path, tokens := authtest.TokenFile(t, auth.ScopeWrite)
	secured, _ := startDev(t, "--auth-file", path)
	tests := []struct {
		name    string
		gateway string
		token   string // FLUX_TOKEN; "" leaves it unset
		refused bool   // the example must fail with the documented refusal
	}{
		{"open", open, "", false},
		{"auth-file/write-token", secured, tokens[auth.ScopeWrite], false},
		{"auth-file/no-token", secured, "", true},
	}
	for _, tt := range tests {
		for _, protocol := range []string{"connect", "grpc", "grpcweb"} {
			t.Run(tt.name+"/"+protocol, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, tsx, "examples/quickstart.ts", tt.gateway, protocol)
				cmd.Dir = sdk
				cmd.Env = environWithout("FLUX_TOKEN")
				if tt.token != "" {
					cmd.Env = append(cmd.Env, "FLUX_TOKEN="+tt.token)
				}
				var stderr strings.Builder
				cmd.Stderr = &stderr
				out, err := cmd.Output()
				if tt.refused {
					var exit *exec.ExitError
					if !errors.As(err, &exit) || exit.ExitCode() != 2 {
						t.Fatalf("the example without a token: %v, want exit status 2\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
					}
					if got := strings.TrimSpace(stderr.String()); got != refusal || len(out) != 0 {
						t.Errorf("the example without a token printed:\n%s\nand on standard error:\n%s\ndocs/sdk-typescript.md says:\n%s", out, got, refusal)
					}
					return
				}
				if err != nil {
					t.Fatalf("the example failed: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
				}
				if got := strings.TrimSpace(string(out)); got != output {
					t.Errorf("the example printed:\n%s\ndocs/sdk-typescript.md says:\n%s", got, output)
				}
			})
		}
	}
}

// docBlock returns the first text block of the section of
// docs/sdk-typescript.md that starts with heading.
func docBlock(t *testing.T, heading string) string {
	t.Helper()
	data, err := os.ReadFile("../../docs/sdk-typescript.md")
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), heading+"\n")
	if !ok {
		t.Fatalf("docs/sdk-typescript.md has no %q section", heading)
	}
	if next := strings.Index(after, "\n## "); next >= 0 {
		after = after[:next]
	}
	_, block, ok := strings.Cut(after, "```text\n")
	if !ok {
		t.Fatalf("docs/sdk-typescript.md's %q section shows no text block", heading)
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatalf("docs/sdk-typescript.md's %q text block is not closed", heading)
	}
	return strings.TrimSpace(block)
}
