package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestREADMECallingTheAPI runs every command of the README's "Calling the
// API" section (grpcurl, buf curl with each protocol, curl) against `flux
// dev`'s gateway, with grpcurl and buf taken from tools/go.mod as the
// section's aliases say. Each must exit 0, and where the README shows a JSON
// answer in a comment, the answer must carry the same fields. The
// TypeScript lines are left to TestTypeScriptExample.
func TestREADMECallingTheAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dev cluster and builds grpcurl and buf")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl on PATH")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	commands := apiExamples(t, string(data))
	if len(commands) < 8 {
		t.Fatalf("found only %d commands in the README's Calling the API section", len(commands))
	}

	// Build the tools before the cluster starts: on a loaded machine the
	// build can outlast the TTL of a key the README writes and reads back.
	for _, tool := range []string{"grpcurl", "buf"} {
		cmd := exec.Command("go", "tool", "-modfile=tools/go.mod", tool, "--version")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", tool, err, out)
		}
	}
	gateway, _ := startDev(t)
	hostport := strings.TrimPrefix(gateway, "http://")
	prelude := "grpcurl() { go tool -modfile=tools/go.mod grpcurl \"$@\"; }\n" +
		"buf() { go tool -modfile=tools/go.mod buf \"$@\"; }\n"
	fieldRE := regexp.MustCompile(`"(\w+)":`)
	for _, c := range commands {
		line := strings.ReplaceAll(c.line, "127.0.0.1:7700", hostport)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-c", prelude+line)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s: %v\n%s", c.line, err, out)
			continue
		}
		for _, m := range fieldRE.FindAllStringSubmatch(c.want, -1) {
			if !strings.Contains(string(out), `"`+m[1]+`"`) {
				t.Errorf("%s: the answer has no %q field, which the README shows:\n%s", c.line, m[1], out)
			}
		}
	}
}

// apiExample is one command of the README and the JSON answer the comment
// under it shows, if any.
type apiExample struct {
	line, want string
}

// apiExamples returns the commands of the sh blocks in the README's
// "Calling the API" section, with continuation lines joined.
func apiExamples(t *testing.T, readme string) []apiExample {
	t.Helper()
	start := strings.Index(readme, "## Calling the API")
	if start < 0 {
		t.Fatal("README.md has no Calling the API section")
	}
	section := readme[start:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	var examples []apiExample
	blocks := strings.Split(section, "```sh\n")
	for _, block := range blocks[1:] {
		block, _, _ = strings.Cut(block, "```")
		var pending string
		for _, line := range strings.Split(block, "\n") {
			switch {
			case pending != "":
				pending += strings.TrimSpace(line)
				if !strings.HasSuffix(pending, `\`) {
					examples = append(examples, apiExample{line: pending})
					pending = ""
				} else {
					pending = strings.TrimSuffix(pending, `\`) + " "
				}
			case strings.HasPrefix(line, "# {") && len(examples) > 0:
				examples[len(examples)-1].want = line
			case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "alias "):
			case strings.HasPrefix(line, "npm ") || strings.Contains(line, "sdk/ts"):
				// TypeScript: TestTypeScriptExample runs it.
			case strings.HasSuffix(line, `\`):
				pending = strings.TrimSuffix(line, `\`) + " "
			default:
				examples = append(examples, apiExample{line: line})
			}
		}
	}
	return examples
}
