package changelog_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const dir = "/data/aof"

// node is a store whose changes go to a log, wired as flux node wires them.
type node struct {
	store *store.Store
	log   *changelog.Log
	stats changelog.ReplayStats
}

func open(t *testing.T, fsys changelog.FS, opts ...changelog.Option) (*node, error) {
	t.Helper()
	n := &node{}
	log, err := changelog.Open(dir, "n1", append([]changelog.Option{changelog.WithFS(fsys)}, opts...)...)
	if err != nil {
		return nil, err
	}
	n.log = log
	n.store = store.New(store.WithChangeHook(log.Append))
	if n.stats, err = log.Replay(n.store); err != nil {
		_ = n.store.Close()
		_ = log.Close()
		return nil, err
	}
	return n, nil
}

// start opens the log, replays it and starts it; Close runs at cleanup.
func start(t *testing.T, fsys changelog.FS, opts ...changelog.Option) *node {
	t.Helper()
	n, err := open(t, fsys, opts...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	n.log.Start()
	t.Cleanup(n.close)
	return n
}

func (n *node) close() {
	_ = n.store.Close()
	_ = n.log.Close()
}

// put writes through the store and waits for durability, as the API does.
func (n *node) put(key, value string) (int64, error) {
	ctx := context.Background()
	if err := n.log.Reserve(ctx); err != nil {
		return 0, err
	}
	res, err := n.store.Put(key, []byte(value), store.PutOptions{})
	if err != nil {
		return 0, err
	}
	return res.Revision, n.log.Wait(ctx, res.Revision)
}

func (n *node) del(key string) error {
	res, err := n.store.Delete(key, store.Condition{})
	if err != nil {
		return err
	}
	return n.log.Wait(context.Background(), res.Revision)
}

func contents(s *store.Store) map[string]string {
	m := map[string]string{}
	s.Range(func(e store.Entry) bool {
		m[e.Key] = string(e.Value)
		return true
	})
	return m
}

func TestReplayRestoresState(t *testing.T) {
	t.Parallel()
	for _, policy := range []changelog.Policy{changelog.FsyncAlways, changelog.FsyncEverySec, changelog.FsyncNo} {
		t.Run(policy.String(), func(t *testing.T) {
			t.Parallel()
			fsys := newMemFS()
			n := start(t, fsys, changelog.WithPolicy(policy))
			want := map[string]string{}
			for i := range 200 {
				key := fmt.Sprintf("k%d", i%50)
				if i%7 == 3 {
					if err := n.del(key); err != nil {
						t.Fatal(err)
					}
					delete(want, key)
					continue
				}
				if _, err := n.put(key, fmt.Sprint(i)); err != nil {
					t.Fatal(err)
				}
				want[key] = fmt.Sprint(i)
			}
			// A key whose TTL passes before the restart must not come back.
			if _, err := n.store.Put("short", []byte("x"), store.PutOptions{TTL: time.Nanosecond}); err != nil {
				t.Fatal(err)
			}
			rev := n.store.Revision()
			n.close()

			again := start(t, fsys, changelog.WithPolicy(policy))
			if got := contents(again.store); !maps.Equal(got, want) {
				t.Errorf("after replay: got %d keys, want %d (%v vs %v)", len(got), len(want), got, want)
			}
			if got := again.store.Revision(); got != rev {
				t.Errorf("revision after replay: got %d, want %d", got, rev)
			}
			if again.stats.Records != rev {
				t.Errorf("replayed %d records, want %d", again.stats.Records, rev)
			}
		})
	}
}

// TestTornTail cuts the last record at every byte: startup keeps exactly the
// records before it and says how much it dropped.
func TestTornTail(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	n := start(t, fsys)
	var sizes []int64
	for i := range 5 {
		if _, err := n.put(fmt.Sprintf("k%d", i), "value"); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n.log.Size())
	}
	n.close()
	seg := dir + "/incr-00000001.aof"
	whole, manifest := fsys.bytes(seg), fsys.bytes(dir+"/MANIFEST")
	if int64(len(whole)) != sizes[4] {
		t.Fatalf("segment is %d bytes, log reported %d", len(whole), sizes[4])
	}
	for cut := sizes[3]; cut < sizes[4]; cut++ {
		fsys := newMemFS()
		fsys.setBytes(dir+"/MANIFEST", manifest)
		fsys.setBytes(seg, whole[:cut])
		n, err := open(t, fsys)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		got := contents(n.store)
		n.close()
		if len(got) != 4 || got["k4"] != "" {
			t.Errorf("cut at %d: got keys %v, want k0..k3", cut, got)
		}
		if n.stats.DroppedBytes != cut-sizes[3] {
			t.Errorf("cut at %d: dropped %d bytes, want %d", cut, n.stats.DroppedBytes, cut-sizes[3])
		}
		if size, _ := fsys.Size(seg); size != sizes[3] {
			t.Errorf("cut at %d: segment left at %d bytes, want %d", cut, size, sizes[3])
		}
	}
}

func TestCorruptionRefusesToStart(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	n := start(t, fsys)
	var sizes []int64
	for i := range 5 {
		if _, err := n.put(fmt.Sprintf("k%d", i), "value"); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n.log.Size())
	}
	n.close()
	seg := dir + "/incr-00000001.aof"
	data := fsys.bytes(seg)
	// Flip a bit inside the third record's payload.
	data[sizes[1]+12] ^= 0x10
	fsys.setBytes(seg, data)

	_, err := open(t, fsys)
	var corrupt *changelog.CorruptError
	if !errors.As(err, &corrupt) || corrupt.Offset != sizes[1] || corrupt.File != seg {
		t.Fatalf("open: got %v, want a CorruptError at %s offset %d", err, seg, sizes[1])
	}

	res, err := changelog.Check(fsys, seg)
	if err != nil || res.OK() || res.Records != 2 || res.ValidBytes != sizes[1] {
		t.Fatalf("check: got %+v, %v; want 2 good records then damage at %d", res, err, sizes[1])
	}
	dropped, err := changelog.Repair(fsys, res)
	if err != nil || dropped != sizes[4]-sizes[1] {
		t.Fatalf("repair: dropped %d, %v; want %d", dropped, err, sizes[4]-sizes[1])
	}
	n, err = open(t, fsys)
	if err != nil {
		t.Fatalf("open after repair: %v", err)
	}
	defer n.close()
	if got := contents(n.store); len(got) != 2 {
		t.Errorf("after repair: got %v, want k0 and k1", got)
	}
}

func TestOtherNodesLogIsRefused(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	n := start(t, fsys)
	n.close()
	if _, err := changelog.Open(dir, "n2", changelog.WithFS(fsys)); err == nil {
		t.Fatal("opened node n1's log as n2")
	}
}

// TestPowerLossAlways cuts the power under concurrent writers: with
// FsyncAlways every acknowledged write survives.
func TestPowerLossAlways(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	n := start(t, fsys, changelog.WithPolicy(changelog.FsyncAlways))
	var (
		mu    sync.Mutex
		acked = map[string]string{}
		wg    sync.WaitGroup
	)
	stop := make(chan struct{})
	for w := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key, value := fmt.Sprintf("w%d/%d", w, i), fmt.Sprintf("v%d", i)
				if _, err := n.put(key, value); err != nil {
					return
				}
				mu.Lock()
				acked[key] = value
				mu.Unlock()
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	crashed := fsys.Crash() // the power goes out here
	ackedAtCrash := maps.Clone(acked)
	mu.Unlock()
	close(stop)
	wg.Wait()

	again := start(t, crashed)
	got := contents(again.store)
	for key, value := range ackedAtCrash {
		if got[key] != value {
			t.Fatalf("acknowledged %s=%s lost after power loss (got %q)", key, value, got[key])
		}
	}
	if len(ackedAtCrash) == 0 {
		t.Fatal("no write was acknowledged before the crash")
	}
}

// TestPowerLossEverySec: what survives is a prefix of the writes (no holes)
// that includes everything the background fsync had covered.
func TestPowerLossEverySec(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	n := start(t, fsys, changelog.WithSyncInterval(5*time.Millisecond))
	r := rand.New(rand.NewPCG(1, 2))
	cutAfter := 2000 + r.IntN(2000)
	var synced int64
	var crashed *memFS
	for i := 1; ; i++ {
		rev, err := n.put(fmt.Sprintf("k%06d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		if rev != int64(i) {
			t.Fatalf("write %d got revision %d", i, rev)
		}
		if i%500 == 0 {
			time.Sleep(10 * time.Millisecond) // let background fsyncs happen between bursts
		}
		if i == cutAfter {
			synced = n.log.Synced()
			crashed = fsys.Crash()
			break
		}
	}
	if synced == 0 {
		t.Fatal("no background fsync ran before the cut: the test would prove nothing")
	}
	again := start(t, crashed)
	got := contents(again.store)
	for i := 1; i <= len(got); i++ {
		if _, ok := got[fmt.Sprintf("k%06d", i)]; !ok {
			t.Fatalf("recovered %d writes but not write %d: not a prefix", len(got), i)
		}
	}
	if int64(len(got)) < synced {
		t.Errorf("recovered %d writes, but %d had been fsynced", len(got), synced)
	}
	t.Logf("cut after %d writes: %d fsynced, %d recovered", cutAfter, synced, len(got))
}

func TestRewriteKeepsStateUnderConcurrentWrites(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	var s *store.Store
	n := start(t, fsys, changelog.WithSnapshot(func(fn func(store.Entry) bool) { s.Range(fn) }))
	s = n.store
	want := sync.Map{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				key := fmt.Sprintf("w%d/%d", w, i%300)
				if _, err := n.put(key, fmt.Sprint(i)); err != nil {
					t.Error(err)
					return
				}
				want.Store(key, fmt.Sprint(i))
			}
		})
	}
	for range 3 {
		if err := n.log.Rewrite(context.Background()); err != nil {
			t.Fatalf("rewrite: %v", err)
		}
	}
	wg.Wait()
	rev := n.store.Revision()
	n.close()
	names, _ := fsys.List(dir)
	if len(names) != 3 {
		t.Errorf("after rewrites the directory holds %v, want MANIFEST, one base and one segment", names)
	}
	again := start(t, fsys)
	got := contents(again.store)
	want.Range(func(k, v any) bool {
		if got[k.(string)] != v.(string) {
			t.Errorf("%s: got %q, want %q", k, got[k.(string)], v)
		}
		return true
	})
	if again.store.Revision() != rev {
		t.Errorf("revision after rewrite and replay: got %d, want %d", again.store.Revision(), rev)
	}
}

// TestRewriteCrashAtEachStep stops a rewrite at each step, takes the disk as
// a crash would leave it, and checks that a restart recovers every
// acknowledged write and no stray file.
func TestRewriteCrashAtEachStep(t *testing.T) {
	t.Parallel()
	steps := []string{"rewrite:rotated", "rewrite:base-written", "rewrite:manifest-switched", "rewrite:removed-one"}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			fsys := newMemFS()
			var (
				s       *store.Store
				crashed *memFS
				armed   bool
			)
			failpoint := func(at string) error {
				if !armed || at != step {
					return nil
				}
				crashed = fsys.Crash()
				return errors.New("crash at " + at)
			}
			n := start(t, fsys, changelog.WithPolicy(changelog.FsyncAlways),
				changelog.WithSnapshot(func(fn func(store.Entry) bool) { s.Range(fn) }),
				changelog.WithFailpoint(failpoint))
			s = n.store
			model := map[string]string{}
			for round := range 2 {
				for i := range 100 {
					key := fmt.Sprintf("k%d", i%40)
					if i%9 == 0 {
						if err := n.del(key); err != nil {
							t.Fatal(err)
						}
						delete(model, key)
						continue
					}
					if _, err := n.put(key, fmt.Sprint(round, i)); err != nil {
						t.Fatal(err)
					}
					model[key] = fmt.Sprint(round, i)
				}
				if round == 0 {
					// A first rewrite that succeeds, so the crash happens with an old
					// base to replace.
					if err := n.log.Rewrite(context.Background()); err != nil {
						t.Fatalf("first rewrite: %v", err)
					}
					armed = true
				}
			}
			err := n.log.Rewrite(context.Background())
			if err == nil || crashed == nil {
				t.Fatalf("rewrite: got %v, want the failpoint to stop it", err)
			}
			again := start(t, crashed)
			if got := contents(again.store); !maps.Equal(got, model) {
				t.Errorf("after a crash at %s: got %v, want %v", step, got, model)
			}
			if again.store.Revision() != n.store.Revision() {
				t.Errorf("revision: got %d, want %d", again.store.Revision(), n.store.Revision())
			}
			// Only the files the manifest names are left, and the recovered log
			// keeps working.
			names, err := crashed.List(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range names {
				if name != "MANIFEST" && !strings.HasPrefix(name, "base-") && !strings.HasPrefix(name, "incr-") || strings.HasSuffix(name, ".tmp") {
					t.Errorf("stray file %s after restart", name)
				}
			}
			if _, err := again.put("after", "crash"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDamagedLengthIsCorruptionNotATornTail: a bit flip in a length field
// must stop the start, not make it drop every record after it as torn.
func TestDamagedLengthIsCorruptionNotATornTail(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	n := start(t, fsys)
	var sizes []int64
	for i := range 50 {
		if _, err := n.put(fmt.Sprintf("k%d", i), "value"); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, n.log.Size())
	}
	n.close()
	seg := dir + "/incr-00000001.aof"
	data := fsys.bytes(seg)
	data[sizes[1]+1] ^= 0x40 // the third record's length now points past the end
	fsys.setBytes(seg, data)
	_, err := open(t, fsys)
	var corrupt *changelog.CorruptError
	if !errors.As(err, &corrupt) || corrupt.Offset != sizes[1] {
		t.Fatalf("open: got %v, want a CorruptError at offset %d", err, sizes[1])
	}
}

// TestZeroFilledTailIsTorn: zeros where unsynced appends were lost are a
// torn tail, cut off like one.
func TestZeroFilledTailIsTorn(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	n := start(t, fsys)
	for i := range 3 {
		if _, err := n.put(fmt.Sprintf("k%d", i), "value"); err != nil {
			t.Fatal(err)
		}
	}
	n.close()
	seg := dir + "/incr-00000001.aof"
	whole := fsys.bytes(seg)
	fsys.setBytes(seg, append(whole, make([]byte, 300)...))
	again, err := open(t, fsys)
	if err != nil {
		t.Fatalf("open with a zero-filled tail: %v", err)
	}
	defer again.close()
	if got := contents(again.store); len(got) != 3 || again.stats.DroppedBytes != 300 {
		t.Errorf("got %d keys and %d dropped bytes, want 3 and 300", len(got), again.stats.DroppedBytes)
	}
}

// TestRewriteOfAnEmptyStore: a rewrite with no live keys writes a valid,
// empty base, and the node starts from it with its revision intact.
func TestRewriteOfAnEmptyStore(t *testing.T) {
	t.Parallel()
	fsys := newMemFS()
	var s *store.Store
	n := start(t, fsys, changelog.WithSnapshot(func(fn func(store.Entry) bool) { s.Range(fn) }))
	s = n.store
	if _, err := n.put("k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := n.del("k"); err != nil {
		t.Fatal(err)
	}
	if err := n.log.Rewrite(context.Background()); err != nil {
		t.Fatal(err)
	}
	n.close()
	again, err := open(t, fsys)
	if err != nil {
		t.Fatalf("open after rewriting an empty store: %v", err)
	}
	defer again.close()
	if got := contents(again.store); len(got) != 0 || again.store.Revision() != 2 {
		t.Errorf("got %v at revision %d, want nothing at revision 2", got, again.store.Revision())
	}
}

// TestWritesAreRefusedOnceTheLogFails: after a write error the log refuses
// new writers in Reserve, before they change the store.
func TestWritesAreRefusedOnceTheLogFails(t *testing.T) {
	t.Parallel()
	fsys := &failingFS{memFS: newMemFS()}
	n := start(t, fsys)
	if _, err := n.put("ok", "v"); err != nil {
		t.Fatal(err)
	}
	fsys.fail.Store(true)
	if _, err := n.put("lost", "v"); err == nil {
		t.Fatal("a write was acknowledged after the disk failed")
	}
	if err := n.log.Reserve(context.Background()); err == nil {
		t.Fatal("Reserve let a writer in after the log failed")
	}
}

type failingFS struct {
	*memFS
	fail atomic.Bool
}

type failingFile struct {
	changelog.File
	fs *failingFS
}

func (f failingFile) Write(p []byte) (int, error) {
	if f.fs.fail.Load() {
		return 0, errors.New("injected write error")
	}
	return f.File.Write(p)
}

func (f *failingFS) OpenAppend(name string) (changelog.File, error) {
	file, err := f.memFS.OpenAppend(name)
	if err != nil {
		return nil, err
	}
	return failingFile{file, f}, nil
}
