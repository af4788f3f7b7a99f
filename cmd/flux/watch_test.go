package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
)

// watchRun is `flux watch` running in the background.
type watchRun struct {
	cancel         context.CancelFunc
	stdout, stderr lockedBuffer
	code           chan int
}

func startWatch(t *testing.T, args ...string) *watchRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchRun{cancel: cancel, code: make(chan int, 1)}
	env := &environment{ctx: ctx, stdin: strings.NewReader(""), stdout: &w.stdout, stderr: &w.stderr}
	go func() { w.code <- run(env, append([]string{"watch"}, args...)) }()
	t.Cleanup(func() {
		cancel()
		<-w.code
	})
	return w
}

// lines waits until the watch has printed n lines, and returns them.
func (w *watchRun) lines(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(w.stdout.String(), "\n") < n {
		select {
		case code := <-w.code:
			w.code <- code
			t.Fatalf("flux watch exited %d after %q (stderr %q), want %d lines", code, w.stdout.String(), w.stderr.String(), n)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("flux watch printed %q, want %d lines", w.stdout.String(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return strings.Split(strings.TrimSuffix(w.stdout.String(), "\n"), "\n")
}

// stop interrupts the watch as Ctrl-C does and returns the token it
// printed for resuming.
func (w *watchRun) stop(t *testing.T) string {
	t.Helper()
	w.cancel()
	code := <-w.code
	w.code <- code
	if code != exitOK {
		t.Fatalf("interrupted flux watch: exit %d (stderr %q), want 0", code, w.stderr.String())
	}
	m := regexp.MustCompile(`--from (\S+)`).FindStringSubmatch(w.stderr.String())
	if m == nil {
		t.Fatalf("interrupted flux watch printed no resume token: stderr %q", w.stderr.String())
	}
	return m[1]
}

// TestWatchCommand prints changes as they happen, one per line, and
// resumes with the token it prints when interrupted.
func TestWatchCommand(t *testing.T) {
	t.Parallel()
	for _, protocol := range []string{"connect", "grpc", "grpcweb"} {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			e := []string{"--endpoint", startNode(t), "--protocol", protocol}
			for _, args := range [][]string{
				{"put", "w/a", "1"},
				{"put", "w/b", "two words"},
				{"put", "other", "x"},
				{"del", "w/a"},
			} {
				if got := flux("", append(args, e...)...); got.code != exitOK {
					t.Fatalf("flux %q: exit %d (stderr %q)", args, got.code, got.stderr)
				}
			}
			w := startWatch(t, append([]string{"w/", "--start-revision", "1"}, e...)...)
			want := []string{
				"put w/a rev=1 node=cli-test value=1",
				`put w/b rev=2 node=cli-test value="two words"`,
				"delete w/a rev=4 node=cli-test",
			}
			got := w.lines(t, len(want))
			for i := range want {
				if i >= len(got) || got[i] != want[i] {
					t.Fatalf("#%d: got %q, want %q", i, got, want)
				}
			}
			token := w.stop(t)

			if got := flux("", append([]string{"put", "w/c", "3"}, e...)...); got.code != exitOK {
				t.Fatalf("put: exit %d (stderr %q)", got.code, got.stderr)
			}
			resumed := startWatch(t, append([]string{"w/", "--from", token, "--json"}, e...)...)
			lines := resumed.lines(t, 1)
			var ev cdcv1.ChangeEvent
			if err := protojson.Unmarshal([]byte(lines[0]), &ev); err != nil {
				t.Fatalf("--json line %q: %v", lines[0], err)
			}
			if ev.GetKey() != "w/c" || ev.GetOp() != cdcv1.Op_OP_PUT || string(ev.GetValue()) != "3" || ev.GetRevision() != 5 {
				t.Errorf("resumed: got %v, want the put of w/c at revision 5", &ev)
			}
			if len(lines) != 1 {
				t.Errorf("resumed: got %q, want one line", lines)
			}
			resumed.stop(t)
		})
	}
}

func TestWatchCommandErrors(t *testing.T) {
	t.Parallel()
	endpoint := startNode(t)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"watch", "a", "b"}, "at most one PREFIX"},
		{[]string{"watch", "a", "--key", "k"}, "exclude each other"},
		{[]string{"watch", "--from", "x", "--start-revision", "3"}, "exclude each other"},
		{[]string{"watch", "--start-revision", "-1"}, "must not be negative"},
		{[]string{"watch", "--from", "not a token", "--endpoint", endpoint}, "invalid_argument: resume_token"},
		{[]string{"watch", "--endpoint", "http://127.0.0.1:1"}, "unavailable"},
	}
	for i, tt := range tests {
		got := flux("", tt.args...)
		if got.code != exitError || !strings.Contains(got.stderr, tt.want) {
			t.Errorf("#%d flux %q: got exit %d and stderr %q, want exit %d mentioning %q", i, tt.args, got.code, got.stderr, exitError, tt.want)
		}
	}
}
