package deploy_test

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// dockerignore returns whether .dockerignore excludes a path (slash
// separated, relative to root) from the build context, as BuildKit decides.
func dockerignore(t *testing.T, root string) func(string) bool {
	t.Helper()
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	return func(path string) bool {
		excluded, err := pm.MatchesOrParentMatches(path)
		if err != nil {
			t.Fatalf(".dockerignore: %s: %v", path, err)
		}
		return excluded
	}
}

// goPackage is the part of `go list -json` output the test reads.
type goPackage struct {
	Dir        string
	GoFiles    []string
	EmbedFiles []string
	Module     *struct{ Main bool }
}

// listDeps lists the packages of this module that ./cmd/flux is built
// from, for the image's platform and without cgo.
func listDeps(t *testing.T, root string) []goPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json=Dir,GoFiles,EmbedFiles,Module", "./cmd/flux")
	cmd.Dir = root
	cmd.Env = append(withoutFluxEnv(os.Environ()), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []goPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p goPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		if p.Module != nil && p.Module.Main {
			pkgs = append(pkgs, p)
		}
	}
	return pkgs
}

// TestDockerignore checks that the build context keeps every file `go
// build ./cmd/flux` reads for the image's platform, and drops the
// repository and local build output.
func TestDockerignore(t *testing.T) {
	t.Parallel()
	root := moduleRoot(t)
	excluded := dockerignore(t, root)
	needed := []string{"go.mod", "go.sum"}
	for _, p := range listDeps(t, root) {
		for _, f := range slices.Concat(p.GoFiles, p.EmbedFiles) {
			rel, err := filepath.Rel(root, filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			needed = append(needed, filepath.ToSlash(rel))
		}
	}
	if len(needed) < 10 {
		t.Fatalf("go list found only %v", needed)
	}
	for _, f := range needed {
		if excluded(f) {
			t.Errorf(".dockerignore excludes %s, which go build ./cmd/flux reads", f)
		}
	}
	for _, f := range []string{".git/HEAD", "flux", "flux-data/node-1/aof", "cmd/flux/main_test.go"} {
		if !excluded(f) {
			t.Errorf(".dockerignore keeps %s in the build context", f)
		}
	}
}
