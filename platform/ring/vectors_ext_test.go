package ring_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/platform/ring"
)

// TestVectors holds the implementation to docs/ring.md, and the document to
// the implementation: every vector below must appear there verbatim.
func TestVectors(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/ring.md")
	if err != nil {
		t.Fatal(err)
	}
	hashes := []struct {
		in   string
		want uint64
	}{
		{"", 0xef46db3751d8e999},
		{"a", 0xd24ec4f1a98c6e5b},
		{"user/42", 0xe89f2a24fc2bb767},
		{"node-1#0", 0x872942a1b8224862},
		{"node-1#1023", 0x6e84ea2755babeca},
		{"ключ", 0xa17d2dd13d89d19c},
	}
	for i, tt := range hashes {
		if got := ring.KeyHash(tt.in); got != tt.want {
			t.Errorf("#%d: XXH64(%q) = %#016x, want %#016x", i, tt.in, got, tt.want)
		}
		row := fmt.Sprintf("| `%q` | `%d` | `0x%016x` |", tt.in, tt.want, tt.want)
		if !strings.Contains(string(doc), row) {
			t.Errorf("#%d: docs/ring.md lacks the row %s", i, row)
		}
	}
	r, err := ring.New([]string{"node-1", "node-2", "node-3"})
	if err != nil {
		t.Fatal(err)
	}
	owners := []struct{ key, owner string }{
		{"a", "node-3"}, {"b", "node-2"}, {"user/1", "node-3"}, {"user/2", "node-2"},
		{"user/3", "node-3"}, {"session:9f2c", "node-2"}, {"ключ", "node-1"}, {"k", "node-3"},
	}
	for i, tt := range owners {
		if got := r.Owner(tt.key); got != tt.owner {
			t.Errorf("#%d: owner of %q = %s, want %s", i, tt.key, got, tt.owner)
		}
		row := fmt.Sprintf("| `%q` | `0x%016x` | `%s` |", tt.key, ring.KeyHash(tt.key), tt.owner)
		if !strings.Contains(string(doc), row) {
			t.Errorf("#%d: docs/ring.md lacks the row %s", i, row)
		}
	}
}
