package changelog_test

import (
	"bytes"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/fluxkv/fluxkv/platform/changelog"
)

// memFS is an in-memory file system that remembers how much of each file
// was fsynced, so a test can cut the power: Crash returns the state a
// machine would find after rebooting. Directory operations (create, rename,
// remove) count as durable at once; the log syncs the directory after each
// of them anyway.
type memFS struct {
	mu    sync.Mutex
	files map[string]*memFile
}

type memFile struct {
	data   []byte
	synced int
}

func newMemFS() *memFS { return &memFS{files: map[string]*memFile{}} }

var _ changelog.FS = (*memFS)(nil)

// Crash returns a copy holding only what was fsynced.
func (m *memFS) Crash() *memFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := newMemFS()
	for name, f := range m.files {
		c.files[name] = &memFile{data: slices.Clone(f.data[:f.synced]), synced: f.synced}
	}
	return c
}

func (m *memFS) bytes(name string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.files[name].data)
}

func (m *memFS) setBytes(name string, b []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files[name] = &memFile{data: slices.Clone(b), synced: len(b)}
}

type memHandle struct {
	fs   *memFS
	name string
}

func (h *memHandle) Write(p []byte) (int, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	f, ok := h.fs.files[h.name]
	if !ok {
		return 0, fs.ErrNotExist
	}
	f.data = append(f.data, p...)
	return len(p), nil
}

func (h *memHandle) Sync() error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if f, ok := h.fs.files[h.name]; ok {
		f.synced = len(f.data)
	}
	return nil
}

func (h *memHandle) Close() error { return nil }

func (m *memFS) Create(name string) (changelog.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.files[name] = &memFile{}
	return &memHandle{m, name}, nil
}

func (m *memFS) OpenAppend(name string) (changelog.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.files[name]; !ok {
		return nil, fs.ErrNotExist
	}
	return &memHandle{m, name}, nil
}

func (m *memFS) Open(name string) (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[name]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return io.NopCloser(bytes.NewReader(slices.Clone(f.data))), nil
}

func (m *memFS) Size(name string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[name]
	if !ok {
		return 0, fs.ErrNotExist
	}
	return int64(len(f.data)), nil
}

func (m *memFS) Truncate(name string, size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[name]
	if !ok {
		return fs.ErrNotExist
	}
	f.data = f.data[:size]
	f.synced = min(f.synced, int(size))
	return nil
}

func (m *memFS) Rename(oldName, newName string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[oldName]
	if !ok {
		return fs.ErrNotExist
	}
	delete(m.files, oldName)
	m.files[newName] = f
	return nil
}

func (m *memFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.files[name]; !ok {
		return fs.ErrNotExist
	}
	delete(m.files, name)
	return nil
}

func (m *memFS) List(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for name := range m.files {
		if filepath.Dir(name) == filepath.Clean(dir) {
			names = append(names, strings.TrimPrefix(name, filepath.Clean(dir)+"/"))
		}
	}
	slices.Sort(names)
	return names, nil
}

func (m *memFS) MkdirAll(string) error { return nil }
func (m *memFS) SyncDir(string) error  { return nil }
