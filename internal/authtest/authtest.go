// Package authtest writes the token files that tests of authentication
// start servers with.
package authtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/platform/auth"
)

// TokenFile writes a token file for --auth-file (auth.Open) holding a new
// token of each of scopes, named after its scope ("write-test"), and
// returns the file's path and the tokens by scope. The file holds only
// their hashes.
func TokenFile(t testing.TB, scopes ...auth.Scope) (path string, tokens map[auth.Scope]string) {
	t.Helper()
	tokens = map[auth.Scope]string{}
	var file strings.Builder
	file.WriteString("# test tokens\n")
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
