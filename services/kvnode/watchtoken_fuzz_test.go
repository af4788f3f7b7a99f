package kvnode

import (
	"maps"
	"testing"
)

// FuzzDecodeToken: any resume_token a client sends either fails with
// errBadToken or decodes to positions that are never negative and that
// encode to a token decoding to the same positions.
func FuzzDecodeToken(f *testing.F) {
	f.Add("")
	f.Add(encodeToken(watchPositions{"node-1": 7, "node-2": 0}))
	f.Add("not base64!")
	f.Add("CgoKBm5vZGUtMRAH")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := decodeToken(s)
		if err != nil {
			if err != errBadToken {
				t.Fatalf("decodeToken(%q): %v, want errBadToken", s, err)
			}
			return
		}
		for node, rev := range p {
			if rev < 0 {
				t.Fatalf("decodeToken(%q): %s at %d", s, node, rev)
			}
		}
		again, err := decodeToken(encodeToken(p))
		if err != nil || !maps.Equal(again, p) {
			t.Fatalf("decodeToken(%q) = %v, which round-trips to %v, %v", s, p, again, err)
		}
	})
}
