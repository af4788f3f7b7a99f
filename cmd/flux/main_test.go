package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/fluxkv/fluxkv/services/kvnode"
)

func TestMain(m *testing.M) {
	// The crash tests start this test binary as a real flux process: it then
	// runs the command line in FLUX_TEST_EXEC (one argument per line).
	if args := os.Getenv("FLUX_TEST_EXEC"); args != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(&environment{ctx: ctx, stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}, strings.Split(args, "\n"))
		stop()
		os.Exit(code)
	}
	goleak.VerifyTestMain(m)
}

func startNode(t *testing.T) string {
	t.Helper()
	node, err := kvnode.New(kvnode.Config{
		Listen:      "127.0.0.1:0",
		AdminListen: "127.0.0.1:0",
		DataDir:     t.TempDir(),
		NodeID:      "cli-test",
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	if err := node.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Shutdown(context.Background()) })
	return node.APIURL()
}

type result struct {
	code           int
	stdout, stderr string
}

func flux(stdin string, args ...string) result {
	var stdout, stderr bytes.Buffer
	env := &environment{ctx: context.Background(), stdin: strings.NewReader(stdin), stdout: &stdout, stderr: &stderr}
	code := run(env, args)
	return result{code, stdout.String(), stderr.String()}
}

func TestCommands(t *testing.T) {
	t.Parallel()
	endpoint := startNode(t)
	for _, protocol := range []string{"connect", "grpc", "grpcweb"} {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			e := []string{"--endpoint", endpoint, "--protocol", protocol}
			k := func(name string) string { return protocol + "/" + name }
			tests := []struct {
				args       []string
				stdin      string
				wantCode   int
				wantStdout string // exact, unless empty
				wantStderr string // substring
			}{
				{args: []string{"put", k("a"), "hello"}, wantCode: 0},
				{args: []string{"get", k("a")}, wantCode: 0, wantStdout: "hello\n"},
				{args: []string{"put", k("a"), "again", "--if-absent"}, wantCode: 1, wantStderr: "failed_precondition: condition failed: key exists"},
				{args: []string{"put", "--ttl", "1h", k("b"), "-"}, stdin: "from stdin", wantCode: 0},
				{args: []string{"get", k("b")}, wantCode: 0, wantStdout: "from stdin\n"},
				{args: []string{"put", k("bin"), "-"}, stdin: "\xff\x00", wantCode: 0},
				{args: []string{"get", k("bin")}, wantCode: 0, wantStdout: "base64:/wA=\n"},
				{args: []string{"scan", protocol + "/", "--keys-only"}, wantCode: 0, wantStdout: k("a") + "\n" + k("b") + "\n" + k("bin") + "\n"},
				{args: []string{"scan", protocol + "/", "--limit", "2", "--keys-only"}, wantCode: 0, wantStdout: k("a") + "\n" + k("b") + "\n", wantStderr: "more keys follow"},
				{args: []string{"del", k("a")}, wantCode: 0},
				{args: []string{"del", k("a")}, wantCode: 1, wantStderr: "not found"},
				{args: []string{"get", k("a")}, wantCode: 1, wantStderr: "not found"},
				{args: []string{"get", ""}, wantCode: 2, wantStderr: "invalid_argument: validation error: key"},
				{args: []string{"put", k("c"), "v", "--if-absent", "--if-present"}, wantCode: 2, wantStderr: "exclude each other"},
				{args: []string{"get"}, wantCode: 2, wantStderr: "want exactly one KEY"},
				{args: []string{"health"}, wantCode: 0, wantStdout: "SERVING\n"},
			}
			for i, tt := range tests {
				got := flux(tt.stdin, append(tt.args, e...)...)
				if got.code != tt.wantCode {
					t.Errorf("#%d flux %q: exit %d, want %d (stderr %q)", i, tt.args, got.code, tt.wantCode, got.stderr)
				}
				if tt.wantStdout != "" && got.stdout != tt.wantStdout {
					t.Errorf("#%d flux %q: stdout %q, want %q", i, tt.args, got.stdout, tt.wantStdout)
				}
				if !strings.Contains(got.stderr, tt.wantStderr) {
					t.Errorf("#%d flux %q: stderr %q, want it to contain %q", i, tt.args, got.stderr, tt.wantStderr)
				}
				if tt.wantCode != 0 && strings.Count(strings.TrimSpace(got.stderr), "\n") > 1 {
					t.Errorf("#%d flux %q: stderr has more than a short message: %q", i, tt.args, got.stderr)
				}
			}
		})
	}
}

func TestJSONOutput(t *testing.T) {
	t.Parallel()
	e := []string{"--endpoint", startNode(t), "--json"}
	if got := flux("", append([]string{"put", "j", `{"a":1}`, "--ttl", "90s"}, e...)...); got.code != 0 {
		t.Fatalf("put: %+v", got)
	}
	got := flux("", append([]string{"get", "j"}, e...)...)
	var out struct {
		Found    bool   `json:"found"`
		Key      string `json:"key"`
		Value    string `json:"value"`
		Revision int64  `json:"revision"`
		TTL      string `json:"ttl"`
	}
	if err := json.Unmarshal([]byte(got.stdout), &out); err != nil {
		t.Fatalf("get --json printed %q: %v", got.stdout, err)
	}
	if !out.Found || out.Key != "j" || out.Value != `{"a":1}` || out.Revision != 1 || out.TTL == "" {
		t.Errorf("get --json: got %+v", out)
	}
	got = flux("", append([]string{"get", "nope"}, e...)...)
	if got.code != 1 || !strings.Contains(got.stdout, `"found": false`) {
		t.Errorf("get --json of a missing key: %+v", got)
	}
	got = flux("", append([]string{"scan", "zzz"}, e...)...)
	if got.code != 0 || !strings.Contains(got.stdout, `"items": []`) {
		t.Errorf("scan --json with no match: %+v", got)
	}
}

func TestConnectionError(t *testing.T) {
	t.Parallel()
	got := flux("", "get", "k", "--endpoint", "http://127.0.0.1:1")
	if got.code != 2 || !strings.Contains(got.stderr, "unavailable") {
		t.Errorf("unreachable endpoint: %+v", got)
	}
	got = flux("", "get", "k", "--endpoint", "not a url")
	if got.code != 2 || !strings.Contains(got.stderr, "--endpoint") {
		t.Errorf("bad endpoint: %+v", got)
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args     []string
		wantCode int
		want     string
	}{
		{[]string{"node", "--help"}, 0, "FLUX_DATA_DIR"},
		{[]string{"put", "--help"}, 0, "--if-revision N"},
		{[]string{"help"}, 0, "Commands:"},
		{[]string{}, 2, "Commands:"},
		{[]string{"bogus"}, 2, "unknown command"},
		{[]string{"get", "--no-such-flag", "k"}, 2, "flag provided but not defined"},
		{[]string{"version"}, 0, "devel"},
	}
	for i, tt := range tests {
		got := flux("", tt.args...)
		if got.code != tt.wantCode || !strings.Contains(got.stdout+got.stderr, tt.want) {
			t.Errorf("#%d flux %q: got %+v, want exit %d mentioning %q", i, tt.args, got, tt.wantCode, tt.want)
		}
	}
}

func TestSplitArgs(t *testing.T) {
	t.Parallel()
	c := putCommand()
	tests := []struct {
		args                  []string
		wantFlags, wantPosArg string
	}{
		{[]string{"k", "v", "--ttl", "30s"}, "--ttl 30s", "k v"},
		{[]string{"--if-absent", "k", "v"}, "--if-absent", "k v"},
		{[]string{"k", "--ttl=1m", "v", "--json"}, "--ttl=1m --json", "k v"},
		{[]string{"k", "--", "-v"}, "", "k -v"},
		{[]string{"k", "-"}, "", "k -"},
	}
	for i, tt := range tests {
		flags, pos := splitArgs(c.flags, tt.args)
		if strings.Join(flags, " ") != tt.wantFlags || strings.Join(pos, " ") != tt.wantPosArg {
			t.Errorf("#%d %q: got flags %q args %q, want %q and %q", i, tt.args, flags, pos, tt.wantFlags, tt.wantPosArg)
		}
	}
}

// TestEnvFallback cannot run in parallel: it sets the process environment.
func TestEnvFallback(t *testing.T) {
	t.Setenv("FLUX_ENDPOINT", "http://127.0.0.1:1")
	got := flux("", "get", "k")
	if got.code != 2 || !strings.Contains(got.stderr, "127.0.0.1:1") {
		t.Errorf("FLUX_ENDPOINT was not used: %+v", got)
	}
}
