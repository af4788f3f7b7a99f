package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/services/kvnode"
)

// TestAOFCheckRepair damages a stopped node's log in the middle: the node
// refuses to start and names the offset, check reports it, repair cuts the
// file back and the node starts with the records before the damage.
func TestAOFCheckRepair(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := kvnode.Config{
		Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", DataDir: dir, NodeID: "aof",
		AppendOnly: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	node, err := kvnode.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if got := flux("", "put", fmt.Sprintf("k%d", i), strings.Repeat("v", 100), "--endpoint", node.APIURL()); got.code != 0 {
			t.Fatalf("put: %+v", got)
		}
	}
	if err := node.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	seg := filepath.Join(dir, "aof", "incr-00000001.aof")
	if got := flux("", "aof", "check", seg); got.code != 0 || !strings.Contains(got.stdout, "10 whole records") || !strings.Contains(got.stdout, "OK") {
		t.Fatalf("check of a whole file: %+v", got)
	}

	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(seg, data, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = kvnode.New(cfg)
	if err == nil || !strings.Contains(err.Error(), "corrupt at byte offset") || !strings.Contains(err.Error(), seg) {
		t.Fatalf("start on a damaged log: got %v, want a refusal naming the file and offset", err)
	}
	got := flux("", "aof", "check", seg)
	if got.code != 1 || !strings.Contains(got.stdout, "damaged") || !strings.Contains(got.stdout, "repair would drop") {
		t.Fatalf("check of a damaged file: %+v", got)
	}
	got = flux("", "aof", "repair", seg)
	if got.code != 0 || !strings.Contains(got.stdout, "repaired: dropped") {
		t.Fatalf("repair: %+v", got)
	}
	if got := flux("", "aof", "check", seg); got.code != 0 {
		t.Fatalf("check after repair: %+v", got)
	}
	node, err = kvnode.New(cfg)
	if err != nil {
		t.Fatalf("start after repair: %v", err)
	}
	if err := node.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer node.Shutdown(context.Background())
	if got := flux("", "get", "k0", "--endpoint", node.APIURL()); got.code != 0 {
		t.Errorf("the records before the damage are gone: %+v", got)
	}
	if got := flux("", "aof", "check"); got.code != 2 {
		t.Errorf("check without a file: %+v", got)
	}
}
