package auth_test

import (
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/platform/auth"
)

// FuzzParse: a token file either parses or fails with an error naming a
// line; it never panics, and what it accepts holds only valid scopes.
func FuzzParse(f *testing.F) {
	f.Add("read " + auth.Hash("t") + " name\n# comment\n")
	f.Add("write sha256:" + strings.Repeat("0", 64))
	f.Add("admin sha256:zz\n")
	f.Add("\n\n\tread\t" + auth.Hash("u") + "\n")
	f.Fuzz(func(t *testing.T, file string) {
		tokens, err := auth.Parse([]byte(file))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "line ") && !strings.Contains(err.Error(), "token too long") {
				t.Fatalf("Parse error without a line: %v", err)
			}
			return
		}
		if tokens.Len() > strings.Count(file, "\n")+1 {
			t.Fatalf("%d tokens from %d lines", tokens.Len(), strings.Count(file, "\n")+1)
		}
	})
}
