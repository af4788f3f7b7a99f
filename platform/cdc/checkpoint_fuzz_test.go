package cdc

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoadCheckpoint: whatever a checkpoint file holds, loading it either
// fails or yields a revision that is not negative from a file that names
// this node; and the revision it yields, writeCheckpoint writes back to a
// file that loads the same.
func FuzzLoadCheckpoint(f *testing.F) {
	const node = "node-a"
	dir := f.TempDir()
	for _, rev := range []int64{0, 1, 1 << 62} {
		file := filepath.Join(dir, "seed")
		if err := writeCheckpoint(file, node, rev); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"node_id":"node-b","revision":5}`))
	f.Add([]byte(`{"node_id":"node-a","revision":-1}`))
	f.Add([]byte(`{"node_id":"node-a","revision":1e3}`))
	f.Add([]byte(`{"NODE_ID":"node-a","revision":7,"node_id":"node-a"}`))
	file := filepath.Join(dir, CheckpointFile)
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		rev, err := loadCheckpoint(file, node)
		if err != nil {
			return
		}
		if rev < 0 {
			t.Fatalf("loaded revision %d from %q", rev, data)
		}
		if _, err := loadCheckpoint(file, "node-b"); err == nil {
			t.Fatalf("%q loads for node-a and for node-b", data)
		}
		if err := writeCheckpoint(file, node, rev); err != nil {
			t.Fatal(err)
		}
		if again, err := loadCheckpoint(file, node); err != nil || again != rev {
			t.Fatalf("revision %d from %q round-trips to %d, %v", rev, data, again, err)
		}
	})
}
