package deploy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// imageBinary is where the image holds the flux binary: its ENTRYPOINT, and
// what health checks run.
const imageBinary = "/flux"

var (
	binDir    string // temporary directory for the flux binary, removed by TestMain
	buildOnce sync.Once
	fluxPath  string
	buildErr  error

	helpMu    sync.Mutex
	helpCache = map[string]flagSet{}
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fluxkv-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// moduleRoot is the directory holding go.mod, Dockerfile and compose.yaml.
func moduleRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return root
}

// withoutFluxEnv is the test's environment less FLUX_ variables, which
// would change the defaults the binary prints.
func withoutFluxEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "FLUX_") {
			out = append(out, kv)
		}
	}
	return out
}

// fluxBinary builds ./cmd/flux once for the whole package and returns its
// path.
func fluxBinary(t testing.TB) string {
	t.Helper()
	root := moduleRoot(t)
	buildOnce.Do(func() {
		fluxPath = filepath.Join(binDir, "flux")
		cmd := exec.Command("go", "build", "-o", fluxPath, "./cmd/flux")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/flux: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return fluxPath
}

// flagSet maps each environment variable a command reads to its flag name.
type flagSet map[string]string

// hasFlag reports whether name (without dashes) is one of the flags.
func (fs flagSet) hasFlag(name string) bool {
	for _, n := range fs {
		if n == name {
			return true
		}
	}
	return false
}

// helpLine is one flag of `flux <command> --help`:
// "  --data-dir directory  [FLUX_DATA_DIR]".
var helpLine = regexp.MustCompile(`^\s+--([a-z0-9][a-z0-9-]*)\b.*\[(FLUX_[A-Z0-9_]+)\]\s*$`)

// fluxFlags returns the flags of `flux <command>`, as its --help prints
// them: the binary itself says which environment variables it reads.
func fluxFlags(t testing.TB, command string) flagSet {
	t.Helper()
	helpMu.Lock()
	defer helpMu.Unlock()
	if fs, ok := helpCache[command]; ok {
		return fs
	}
	cmd := exec.Command(fluxBinary(t), command, "--help")
	cmd.Env = withoutFluxEnv(os.Environ())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("flux %s --help: %v\n%s", command, err, out)
	}
	fs := flagSet{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := helpLine.FindStringSubmatch(sc.Text()); m != nil {
			fs[m[2]] = m[1]
		}
	}
	if len(fs) == 0 {
		t.Fatalf("flux %s --help lists no flags with environment variables:\n%s", command, out)
	}
	helpCache[command] = fs
	return fs
}

// checkHealthCommand checks a health check's test, ["CMD", "/flux",
// "health", flags...]: every flag is one `flux health` has, and the
// endpoint is this container's own API port. It returns the flags' values.
func checkHealthCommand(t *testing.T, where string, test []string, listen string) map[string]string {
	t.Helper()
	if len(test) < 3 || test[0] != "CMD" || test[1] != imageBinary || test[2] != "health" {
		t.Errorf("%s: health check %q: want [CMD %s health ...] (exec form: the image has no shell)", where, test, imageBinary)
		return nil
	}
	known := fluxFlags(t, "health")
	values := map[string]string{}
	args := test[3:]
	for i := 0; i < len(args); i++ {
		name, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			t.Errorf("%s: health check argument %q: want only flags", where, args[i])
			continue
		}
		name, value, hasValue := strings.Cut(name, "=")
		if !known.hasFlag(name) {
			t.Errorf("%s: health check flag --%s: flux health has no such flag", where, name)
		}
		if !hasValue && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			i++
			value = args[i]
		}
		values[name] = value
	}
	u, err := url.Parse(values["endpoint"])
	if err != nil || u.Scheme != "http" {
		t.Errorf("%s: health check --endpoint %q: want http://127.0.0.1:<API port>", where, values["endpoint"])
		return values
	}
	_, listenPort, err := net.SplitHostPort(listen)
	if err != nil {
		t.Errorf("%s: listen address %q: %v", where, listen, err)
		return values
	}
	if host := u.Hostname(); host != "127.0.0.1" && host != "localhost" {
		t.Errorf("%s: health check --endpoint %q: want the container's own loopback address", where, values["endpoint"])
	}
	if u.Port() != listenPort {
		t.Errorf("%s: health check --endpoint %q: want port %s, the API port (%s)", where, values["endpoint"], listenPort, listen)
	}
	return values
}

// TestFluxHelp checks that the --help parser reads what the binary prints,
// so the other tests do not pass on an empty flag set.
func TestFluxHelp(t *testing.T) {
	t.Parallel()
	node := fluxFlags(t, "node")
	if node["FLUX_DATA_DIR"] != "data-dir" || node["FLUX_LISTEN"] != "listen" {
		t.Errorf("flux node --help parsed as %v", node)
	}
	if _, ok := fluxFlags(t, "gateway")["FLUX_NODE_ID"]; ok {
		t.Error("flux gateway --help parsed as having --node-id")
	}
	if fluxFlags(t, "health")["FLUX_ENDPOINT"] != "endpoint" {
		t.Error("flux health --help parsed without --endpoint")
	}
}
