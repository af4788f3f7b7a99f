package cdc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// checkpointJSON is the checkpoint file's content. The node id guards against
// a data directory copied to another node: resuming from a foreign
// checkpoint would skip events.
type checkpointJSON struct {
	NodeID   string `json:"node_id"`
	Revision int64  `json:"revision"`
}

func checkpointPath(dir string) string { return filepath.Join(dir, CheckpointFile) }

// loadCheckpoint reads the checkpoint in file; a missing file is revision 0.
func loadCheckpoint(file, nodeID string) (int64, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cdc: read checkpoint: %w", err)
	}
	var c checkpointJSON
	if err := json.Unmarshal(b, &c); err != nil {
		return 0, fmt.Errorf("cdc: checkpoint %s is damaged: %w", file, err)
	}
	if c.NodeID != nodeID {
		return 0, fmt.Errorf("cdc: checkpoint %s belongs to node %q, not %q", file, c.NodeID, nodeID)
	}
	if c.Revision < 0 {
		return 0, fmt.Errorf("cdc: checkpoint %s holds negative revision %d", file, c.Revision)
	}
	return c.Revision, nil
}

// writeCheckpoint replaces file atomically: a crash leaves either the old
// checkpoint or the new one, never a torn file.
func writeCheckpoint(file, nodeID string, rev int64) (err error) {
	b, err := json.Marshal(checkpointJSON{NodeID: nodeID, Revision: rev})
	if err != nil {
		return err
	}
	dir := filepath.Dir(file)
	tmp, err := os.CreateTemp(dir, filepath.Base(file)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(append(b, '\n')); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), file); err != nil {
		return err
	}
	// The rename is durable only once the directory entry is.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// saveCheckpoint persists the confirmed revision if it moved, at most once
// per CheckpointInterval unless force is set, and then reports it through
// OnCheckpoint. Only the relay's goroutine calls it.
func (r *Relay) saveCheckpoint(force bool) error {
	rev := r.confirmed.Load()
	if rev == r.persisted.Load() {
		return nil
	}
	if !force && time.Since(r.lastSave) < r.cfg.CheckpointInterval {
		return nil
	}
	if err := writeCheckpoint(r.file, r.cfg.NodeID, rev); err != nil {
		r.saveLog.Do(func() {
			r.log.Error("cdc: cannot write checkpoint; events will be published again after a restart", "file", r.file, "err", err)
		})
		return fmt.Errorf("cdc: write checkpoint: %w", err)
	}
	r.lastSave = time.Now()
	r.persisted.Store(rev)
	r.metrics.checkpoint.Set(float64(rev))
	if r.cfg.OnCheckpoint != nil {
		r.cfg.OnCheckpoint(rev)
	}
	return nil
}
