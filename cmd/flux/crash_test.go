package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
)

// child is a flux node running as a separate process.
type child struct {
	cmd    *exec.Cmd
	url    string
	exited chan struct{}
	logs   *strings.Builder
	mu     *sync.Mutex
}

// startChild runs `flux node` on dir in a new process and waits until it
// serves.
func startChild(t *testing.T, dir string, extra ...string) *child {
	t.Helper()
	args := append([]string{"node", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--data-dir", dir, "--node-id", "crash", "--log-format", "json"}, extra...)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "FLUX_TEST_EXEC="+strings.Join(args, "\n"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, exited: make(chan struct{}), logs: &strings.Builder{}, mu: &sync.Mutex{}}
	listen := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stderr)
		for scanner.Scan() {
			line := scanner.Text()
			c.mu.Lock()
			c.logs.WriteString(line + "\n")
			c.mu.Unlock()
			var rec struct {
				Msg    string `json:"msg"`
				Listen string `json:"listen"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "node serving" {
				listen <- rec.Listen
			}
		}
		_ = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() { c.kill() })
	select {
	case addr := <-listen:
		c.url = "http://" + addr
	case <-c.exited:
		t.Fatalf("node exited before serving:\n%s", c.output())
	case <-time.After(30 * time.Second):
		c.kill()
		t.Fatalf("node did not start serving in 30s:\n%s", c.output())
	}
	return c
}

func (c *child) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.logs.String()
}

func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// TestCrashRecovery kills a node with SIGKILL while 32 writers are busy and
// checks, after a restart, that every acknowledged write is there with its
// value and that no key holds a value nobody wrote.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("starts node processes")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	for _, policy := range []string{"always", "everysec", "no"} {
		t.Run(policy, func(t *testing.T) {
			dir := t.TempDir()
			node := startChild(t, dir, "--appendfsync", policy)
			client := kvv1connect.NewKVServiceClient(newTestClient(t), node.url)

			var (
				mu        sync.Mutex
				acked     = map[string]string{}
				attempted = map[string]string{}
				wg        sync.WaitGroup
			)
			for w := range 32 {
				wg.Go(func() {
					for i := 0; ; i++ {
						key, value := fmt.Sprintf("w%02d/%06d", w, i), fmt.Sprintf("%s-%d-%d", policy, w, i)
						mu.Lock()
						attempted[key] = value
						mu.Unlock()
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						_, err := client.Put(ctx, connect.NewRequest(&kvv1.PutRequest{Key: key, Value: []byte(value)}))
						cancel()
						if err != nil {
							return // the node is gone
						}
						mu.Lock()
						acked[key] = value
						mu.Unlock()
					}
				})
			}
			time.Sleep(time.Duration(300+r.IntN(900)) * time.Millisecond)
			if err := node.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-node.exited
			wg.Wait()
			if len(acked) == 0 {
				t.Fatalf("no write was acknowledged before the kill:\n%s", node.output())
			}

			restarted := startChild(t, dir, "--appendfsync", policy)
			client = kvv1connect.NewKVServiceClient(newTestClient(t), restarted.url)
			got := scanAll(t, client)
			lost := 0
			for key, value := range acked {
				if got[key] != value {
					lost++
					if lost < 5 {
						t.Errorf("acknowledged %s=%s, after restart %q", key, value, got[key])
					}
				}
			}
			for key, value := range got {
				if attempted[key] != value {
					t.Errorf("after restart %s=%s, which no writer wrote", key, value)
				}
			}
			t.Logf("%s: %d acknowledged, %d attempted, %d recovered, %d lost", policy, len(acked), len(attempted), len(got), lost)
		})
	}
}

func newTestClient(t *testing.T) *http.Client {
	t.Helper()
	c, err := (&clientTLSFlags{}).httpClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func scanAll(t *testing.T, client kvv1connect.KVServiceClient) map[string]string {
	t.Helper()
	all := map[string]string{}
	cursor := ""
	for {
		resp, err := client.Scan(context.Background(), connect.NewRequest(&kvv1.ScanRequest{Limit: 10000, Cursor: cursor}))
		if err != nil {
			t.Fatalf("scan: %v", err)
		}
		for _, kv := range resp.Msg.GetItems() {
			all[kv.GetKey()] = string(kv.GetValue())
		}
		if cursor = resp.Msg.GetNextCursor(); cursor == "" {
			return all
		}
	}
}
