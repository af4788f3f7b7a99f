package changelog_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/store"
)

// stallFS is a memFS whose writes block while the disk is "stalled".
type stallFS struct {
	*memFS
	stalled chan struct{} // writes block until it is closed
}

type stallFile struct {
	changelog.File
	fs *stallFS
}

func (f stallFile) Write(p []byte) (int, error) {
	<-f.fs.stalled
	return f.File.Write(p)
}

func (s *stallFS) OpenAppend(name string) (changelog.File, error) {
	f, err := s.memFS.OpenAppend(name)
	if err != nil {
		return nil, err
	}
	return stallFile{f, s}, nil
}

// TestStalledDiskDoesNotHoldWritersForever: writers get ErrStalled after the
// stall timeout instead of hanging, the buffer stays bounded, and writes are
// acknowledged again once the disk recovers.
func TestStalledDiskDoesNotHoldWritersForever(t *testing.T) {
	t.Parallel()
	fsys := &stallFS{memFS: newMemFS(), stalled: make(chan struct{})}
	var once sync.Once
	recovered := func() { once.Do(func() { close(fsys.stalled) }) }
	n := start(t, fsys, changelog.WithStallTimeout(50*time.Millisecond), changelog.WithBufferLimit(4096))
	// Cleanups run last-registered first: this one unblocks the writer
	// before start's cleanup closes the log, even if the test fails early.
	t.Cleanup(recovered)
	ctx := context.Background()

	res, err := n.store.Put("k", []byte("v"), store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.log.Wait(ctx, res.Revision); !errors.Is(err, changelog.ErrStalled) {
		t.Fatalf("wait on a stalled disk: got %v, want ErrStalled", err)
	}
	// Once the disk is known to be stalled, new writers are refused before
	// they change anything, though the buffer has room: their writes could
	// not be confirmed either.
	if err := n.log.Reserve(ctx); !errors.Is(err, changelog.ErrStalled) {
		t.Fatalf("reserve on a stalled disk: got %v, want ErrStalled", err)
	}
	// Past the buffer's limit, the answer is the same.
	for range 100 {
		if _, err := n.store.Put("k", make([]byte, 512), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.log.Reserve(ctx); !errors.Is(err, changelog.ErrStalled) {
		t.Fatalf("reserve with a full buffer: got %v, want ErrStalled", err)
	}

	// The disk recovers: once the writer has drained what piled up, writes
	// are acknowledged again.
	recovered()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := n.put("after", "stall")
		if err == nil {
			break
		}
		if !errors.Is(err, changelog.ErrStalled) || time.Now().After(deadline) {
			t.Fatalf("write after the disk recovered: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
