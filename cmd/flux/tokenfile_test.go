package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/platform/auth"
)

// writeTokenFile writes a token file for --auth-file holding a new token of
// each of scopes, named after its scope ("write-test"), and returns the
// file's path and the tokens by scope. The file holds only their hashes.
func writeTokenFile(t *testing.T, scopes ...auth.Scope) (path string, tokens map[auth.Scope]string) {
	t.Helper()
	tokens = map[auth.Scope]string{}
	var file strings.Builder
	for _, s := range scopes {
		tok, err := auth.NewToken()
		if err != nil {
			t.Fatal(err)
		}
		tokens[s] = tok
		fmt.Fprintf(&file, "%s %s %s-test\n", s, auth.Hash(tok), s)
	}
	path = filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(file.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, tokens
}

// environWithout is the test's environment without the variables named:
// a FLUX_TOKEN the developer has set must not reach a run that checks
// what happens without one.
func environWithout(names ...string) []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.Contains(names, name)
	})
}
