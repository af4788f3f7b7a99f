package changelog

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

const (
	manifestName    = "MANIFEST"
	manifestTmpName = "MANIFEST.tmp"
	segmentSuffix   = ".aof"
)

// manifest names the segments that hold the log, oldest first. It is
// replaced atomically (write a temporary file, sync, rename, sync the
// directory), so a crash leaves either the old or the new set in force.
type manifest struct {
	Format int    `json:"format"`
	NodeID string `json:"node_id"`
	// Base is the snapshot written by the last rewrite; empty before the
	// first one.
	Base string `json:"base,omitempty"`
	// BaseRevision is the revision the store had reached when the segment
	// after the base began: replay restores the revision counter to at least
	// this, even if every key it covered is gone.
	BaseRevision int64 `json:"base_revision,omitempty"`
	// Segments are the increments after the base; the last one is active.
	Segments []string `json:"segments"`
	// Next numbers the next file a rotation or rewrite creates.
	Next int `json:"next"`
	// History holds increments that a rewrite replaced but readers (the
	// CDC relay, Watch streams) had not finished: they are not replayed,
	// only read for their events, and dropped once every reader is past
	// them. Oldest first.
	History []history `json:"history,omitempty"`
}

// history is a run of replaced increments holding the events of revisions
// First to Last.
type history struct {
	Segments []string `json:"segments"`
	First    int64    `json:"first"`
	Last     int64    `json:"last"`
}

// eventFiles are the segments that hold events, oldest first: the history,
// then the increments.
func (m *manifest) eventFiles() []string {
	var files []string
	for _, h := range m.History {
		files = append(files, h.Segments...)
	}
	return append(files, m.Segments...)
}

// oldest is the oldest revision whose event the segments hold.
func (m *manifest) oldest() int64 {
	switch {
	case len(m.History) > 0:
		return m.History[0].First
	case m.Base != "":
		return m.BaseRevision + 1
	default:
		return 1
	}
}

// oldestAfterBase is the first revision the increments after the base hold.
func (m *manifest) oldestAfterBase() int64 {
	if m.Base != "" {
		return m.BaseRevision + 1
	}
	return 1
}

// allFiles are every segment the manifest names.
func (m *manifest) allFiles() []string {
	files := m.files()
	for _, h := range m.History {
		files = append(files, h.Segments...)
	}
	return files
}

func (m *manifest) files() []string {
	files := make([]string, 0, len(m.Segments)+1)
	if m.Base != "" {
		files = append(files, m.Base)
	}
	return append(files, m.Segments...)
}

func (m *manifest) newName(kind string) string {
	m.Next++
	return fmt.Sprintf("%s-%08d%s", kind, m.Next, segmentSuffix)
}

func (m *manifest) active() string { return m.Segments[len(m.Segments)-1] }

// readManifest returns the manifest in dir, or nil if there is none.
func readManifest(fsys FS, dir string) (*manifest, error) {
	r, err := fsys.Open(join(dir, manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open manifest: %w", err)
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", join(dir, manifestName), err)
	}
	if m.Format != formatVersion {
		return nil, fmt.Errorf("%s: format %d, this build reads %d", join(dir, manifestName), m.Format, formatVersion)
	}
	if len(m.Segments) == 0 {
		return nil, fmt.Errorf("%s: lists no segments", join(dir, manifestName))
	}
	// A file named twice would be replayed twice, and a reader at its end
	// would find it again as the next segment, forever.
	named := make(map[string]bool)
	for _, name := range m.allFiles() {
		if strings.ContainsAny(name, `/\`) || !strings.HasSuffix(name, segmentSuffix) {
			return nil, fmt.Errorf("%s: bad segment name %q", join(dir, manifestName), name)
		}
		if named[name] {
			return nil, fmt.Errorf("%s: names segment %q twice", join(dir, manifestName), name)
		}
		named[name] = true
	}
	return &m, nil
}

// writeManifest replaces the manifest in dir atomically and durably.
func writeManifest(fsys FS, dir string, m *manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := join(dir, manifestTmpName)
	f, err := fsys.Create(tmp)
	if err != nil {
		return fmt.Errorf("create manifest: %w", err)
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync manifest: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close manifest: %w", err)
	}
	if err := fsys.Rename(tmp, join(dir, manifestName)); err != nil {
		return fmt.Errorf("install manifest: %w", err)
	}
	return fsys.SyncDir(dir)
}
