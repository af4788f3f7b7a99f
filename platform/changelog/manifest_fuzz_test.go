package changelog

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"slices"
	"strings"
	"testing"
)

// manifestFS holds files in memory, for the manifest's reader and writer.
type manifestFS struct {
	files map[string][]byte
}

var _ FS = (*manifestFS)(nil)

type manifestFile struct {
	fs   *manifestFS
	name string
}

func (f manifestFile) Write(p []byte) (int, error) {
	f.fs.files[f.name] = append(f.fs.files[f.name], p...)
	return len(p), nil
}

func (manifestFile) Sync() error  { return nil }
func (manifestFile) Close() error { return nil }

func (m *manifestFS) Create(name string) (File, error) {
	m.files[name] = nil
	return manifestFile{m, name}, nil
}

func (m *manifestFS) Open(name string) (io.ReadCloser, error) {
	b, ok := m.files[name]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (m *manifestFS) Rename(oldName, newName string) error {
	b, ok := m.files[oldName]
	if !ok {
		return fs.ErrNotExist
	}
	delete(m.files, oldName)
	m.files[newName] = b
	return nil
}

func (m *manifestFS) SyncDir(string) error { return nil }

func (*manifestFS) OpenAppend(string) (File, error) { return nil, errors.ErrUnsupported }
func (*manifestFS) Size(string) (int64, error)      { return 0, errors.ErrUnsupported }
func (*manifestFS) Truncate(string, int64) error    { return errors.ErrUnsupported }
func (*manifestFS) Remove(string) error             { return errors.ErrUnsupported }
func (*manifestFS) List(string) ([]string, error)   { return nil, errors.ErrUnsupported }
func (*manifestFS) MkdirAll(string) error           { return nil }

// FuzzReadManifest: a MANIFEST file either is refused or names at least one
// segment, each of them once and by a plain file name in the log's
// directory; and what is accepted, writeManifest writes back to a file
// that reads the same.
func FuzzReadManifest(f *testing.F) {
	for _, m := range []*manifest{
		{Format: formatVersion, NodeID: "n1", Segments: []string{"incr-00000001.aof"}, Next: 1},
		{
			Format: formatVersion, NodeID: "node-2", Base: "base-00000007.aof", BaseRevision: 900,
			Segments: []string{"incr-00000006.aof", "incr-00000008.aof"}, Next: 8,
			History: []history{{Segments: []string{"incr-00000003.aof", "incr-00000004.aof"}, First: 301, Last: 700}},
		},
	} {
		fsys := &manifestFS{files: map[string][]byte{}}
		if err := writeManifest(fsys, "/d", m); err != nil {
			f.Fatal(err)
		}
		f.Add(fsys.files["/d/"+manifestName])
	}
	f.Add([]byte(`{"format": 1, "node_id": "n1", "segments": ["../escape.aof"], "next": 1}`))
	f.Add([]byte(`{"format": 1, "node_id": "n1", "segments": [], "next": 1}`))
	f.Add([]byte(`{"format": 2, "node_id": "n1", "segments": ["incr-00000001.aof"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fsys := &manifestFS{files: map[string][]byte{"/d/" + manifestName: data}}
		m, err := readManifest(fsys, "/d")
		if err != nil {
			return
		}
		if m == nil || m.Format != formatVersion || len(m.Segments) == 0 {
			t.Fatalf("accepted %q as %+v", data, m)
		}
		seen := map[string]bool{}
		for _, name := range m.allFiles() {
			if !strings.HasSuffix(name, segmentSuffix) || strings.ContainsAny(name, `/\`) || seen[name] {
				t.Fatalf("accepted %q, which names file %q", data, name)
			}
			seen[name] = true
		}

		out := &manifestFS{files: map[string][]byte{}}
		if err := writeManifest(out, "/d", m); err != nil {
			t.Fatalf("write %+v: %v", m, err)
		}
		again, err := readManifest(out, "/d")
		if err != nil || !sameManifest(again, m) {
			t.Fatalf("%+v round-trips to %+v, %v", m, again, err)
		}
	})
}

func sameManifest(a, b *manifest) bool {
	if a.Format != b.Format || a.NodeID != b.NodeID || a.Base != b.Base || a.BaseRevision != b.BaseRevision ||
		!slices.Equal(a.Segments, b.Segments) || a.Next != b.Next || len(a.History) != len(b.History) {
		return false
	}
	for i := range a.History {
		if !slices.Equal(a.History[i].Segments, b.History[i].Segments) || a.History[i].First != b.History[i].First || a.History[i].Last != b.History[i].Last {
			return false
		}
	}
	return true
}
