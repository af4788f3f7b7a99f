package deploy_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	dfparser "github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"

	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
)

// testVersion stands in for --build-arg VERSION when the test expands the
// builder's commands, to follow the version into the binary.
const testVersion = "v0.0.0-deploy-test"

// versionVar is the variable -X must set for `flux version` to print the
// stamped version.
const versionVar = "github.com/fluxkv/fluxkv/platform/buildinfo.Version"

// dockerfile is the parsed Dockerfile.
type dockerfile struct {
	stages   []instructions.Stage
	metaArgs map[string]string // global ARGs and their defaults
}

// parseDockerfile parses the Dockerfile with BuildKit's parser, failing on
// any parser warning or lint finding BuildKit would print.
func parseDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	f, err := os.Open(filepath.Join(moduleRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := dfparser.Parse(f)
	if err != nil {
		t.Fatalf("parse Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile: %s", w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []dfparser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		t.Errorf("Dockerfile:%d: %s: %s", line, rule, msg)
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("parse Dockerfile instructions: %v", err)
	}
	d := &dockerfile{stages: stages, metaArgs: map[string]string{}}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			d.metaArgs[kv.Key] = kv.ValueString()
		}
	}
	return d
}

// baseImage is a stage's base image with global ARGs at their defaults.
func (d *dockerfile) baseImage(s instructions.Stage) string {
	return os.Expand(s.BaseName, func(k string) string { return d.metaArgs[k] })
}

// stage returns the stage named name.
func (d *dockerfile) stage(name string) (instructions.Stage, bool) {
	for _, s := range d.stages {
		if strings.EqualFold(s.Name, name) {
			return s, true
		}
	}
	return instructions.Stage{}, false
}

// goBuild is the `go build` a RUN instruction runs.
type goBuild struct {
	run      *instructions.RunCommand
	env      map[string]string // variables set on the command line or by ENV
	flags    map[string]string // -name -> value ("" for booleans)
	packages []string
}

// goBuildValueFlags are the go build flags that take a value.
var goBuildValueFlags = []string{
	"-asmflags", "-buildmode", "-buildvcs", "-compiler", "-gccgoflags", "-gcflags", "-installsuffix",
	"-ldflags", "-mod", "-modfile", "-o", "-overlay", "-p", "-pgo", "-pkgdir", "-tags", "-toolexec",
}

// findGoBuild finds the RUN of stage s that runs `go build`, expanding its
// words as the shell would with the build arguments args.
func findGoBuild(t *testing.T, s instructions.Stage, args map[string]string) *goBuild {
	t.Helper()
	env := map[string]string{}
	for _, c := range s.Commands {
		switch c := c.(type) {
		case *instructions.ArgCommand:
			for _, kv := range c.Args {
				if v, ok := args[kv.Key]; ok {
					env[kv.Key] = v
				} else {
					env[kv.Key] = kv.ValueString()
				}
			}
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env[kv.Key] = kv.Value
			}
		case *instructions.RunCommand:
			var kvs []string
			for k, v := range env {
				kvs = append(kvs, k+"="+v)
			}
			words := c.CmdLine
			if c.PrependShell {
				var err error
				words, err = shell.NewLex('\\').ProcessWords(strings.Join(c.CmdLine, " "), shell.EnvsFromSlice(kvs))
				if err != nil {
					t.Fatalf("Dockerfile: RUN %q: %v", c.CmdLine, err)
				}
			}
			if b := parseGoBuild(words, env); b != nil {
				b.run = c
				return b
			}
		}
	}
	return nil
}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// parseGoBuild parses the first `go build` in a shell command's words, with
// the variables assigned in front of it on top of env.
func parseGoBuild(words []string, env map[string]string) *goBuild {
	for i := 0; i+1 < len(words); i++ {
		if words[i] != "go" || words[i+1] != "build" {
			continue
		}
		b := &goBuild{env: map[string]string{}, flags: map[string]string{}}
		for k, v := range env {
			b.env[k] = v
		}
		for j := i - 1; j >= 0 && assignment.MatchString(words[j]); j-- {
			k, v, _ := strings.Cut(words[j], "=")
			b.env[k] = v
		}
		args := words[i+2:]
		for j := 0; j < len(args); j++ {
			a := args[j]
			if slices.Contains([]string{"&&", "||", ";", "|"}, a) {
				break
			}
			if !strings.HasPrefix(a, "-") {
				b.packages = append(b.packages, a)
				continue
			}
			name, value, hasValue := strings.Cut(strings.Replace(a, "--", "-", 1), "=")
			if !hasValue && slices.Contains(goBuildValueFlags, name) && j+1 < len(args) {
				j++
				value = args[j]
			}
			b.flags[name] = value
		}
		return b
	}
	return nil
}

// packageVar reports whether the package in dir declares a package-level
// string variable named name, which -X can set.
func packageVar(dir, name string) (bool, error) {
	fset := token.NewFileSet()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		if err != nil {
			return false, err
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if n.Name != name {
						continue
					}
					if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "string" {
						return true, nil
					}
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							return true, nil
						}
					}
				}
			}
		}
	}
	return false, nil
}

// goVersion is the language version go.mod asks for, as major.minor.
func goVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(moduleRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

// TestDockerfileBuild checks the builder: a Go image of go.mod's version
// builds ./cmd/flux statically, stamped with the VERSION build argument,
// with BuildKit caches for modules and builds.
func TestDockerfileBuild(t *testing.T) {
	t.Parallel()
	d := parseDockerfile(t)
	if len(d.stages) < 2 {
		t.Fatalf("Dockerfile: %d stages, want a builder and a runtime stage", len(d.stages))
	}
	final := d.stages[len(d.stages)-1]
	var copyBinary *instructions.CopyCommand
	for _, c := range final.Commands {
		if c, ok := c.(*instructions.CopyCommand); ok && c.DestPath == imageBinary {
			copyBinary = c
		}
	}
	if copyBinary == nil || copyBinary.From == "" || len(copyBinary.SourcePaths) != 1 {
		t.Fatalf("Dockerfile: the final stage has no COPY --from=<builder> <binary> %s", imageBinary)
	}
	builder, ok := d.stage(copyBinary.From)
	if !ok {
		t.Fatalf("Dockerfile: COPY --from=%s: no such stage", copyBinary.From)
	}
	image := d.baseImage(builder)
	if want := regexp.MustCompile(`^golang:` + regexp.QuoteMeta(goVersion(t)) + `([.-][a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?$`); !want.MatchString(image) {
		t.Errorf("Dockerfile: builder image %q: want golang:%s, the Go version of go.mod", image, goVersion(t))
	}

	b := findGoBuild(t, builder, map[string]string{"VERSION": testVersion, "TARGETOS": "linux", "TARGETARCH": "amd64"})
	if b == nil {
		t.Fatalf("Dockerfile: stage %s runs no go build", builder.Name)
	}
	if !slices.Equal(b.packages, []string{"./cmd/flux"}) {
		t.Errorf("Dockerfile: go build %q, want ./cmd/flux", b.packages)
	}
	if b.env["CGO_ENABLED"] != "0" {
		t.Errorf("Dockerfile: go build runs with CGO_ENABLED=%q, want 0: the runtime image has no C library", b.env["CGO_ENABLED"])
	}
	if _, ok := b.flags["-trimpath"]; !ok {
		t.Error("Dockerfile: go build without -trimpath")
	}
	if got, want := b.flags["-o"], copyBinary.SourcePaths[0]; got != want {
		t.Errorf("Dockerfile: go build -o %q, but the final stage copies %q", got, want)
	}
	ldflags := strings.Fields(b.flags["-ldflags"])
	for _, f := range []string{"-s", "-w"} {
		if !slices.Contains(ldflags, f) {
			t.Errorf("Dockerfile: -ldflags %q lacks %s", ldflags, f)
		}
	}
	stamped := false
	for i, f := range ldflags {
		if (f == "-X" && i+1 < len(ldflags) && ldflags[i+1] == versionVar+"="+testVersion) || f == "-X="+versionVar+"="+testVersion {
			stamped = true
		}
	}
	if !stamped {
		t.Errorf("Dockerfile: -ldflags %q: want -X %s=${VERSION}", ldflags, versionVar)
	}
	pkgDir := filepath.Join(moduleRoot(t), filepath.FromSlash(strings.TrimPrefix(versionVar[:strings.LastIndex(versionVar, ".")], "github.com/fluxkv/fluxkv/")))
	if ok, err := packageVar(pkgDir, versionVar[strings.LastIndex(versionVar, ".")+1:]); err != nil || !ok {
		t.Errorf("%s: no package-level string variable for -X to set (%v)", versionVar, err)
	}

	caches := map[string]bool{}
	if err := b.run.Expand(func(w string) (string, error) { return w, nil }); err != nil {
		t.Fatalf("Dockerfile: RUN mounts: %v", err)
	}
	for _, m := range instructions.GetMounts(b.run) {
		if m.Type == instructions.MountTypeCache {
			caches[m.Target] = true
		}
	}
	for _, dir := range []string{"/go/pkg/mod", "/root/.cache/go-build"} {
		if !caches[dir] {
			t.Errorf("Dockerfile: go build without --mount=type=cache,target=%s", dir)
		}
	}
}

// TestDockerfileRuntime checks the image: minimal, non-root, the binary as
// entrypoint running a node by default, reachable and healthy-checked on
// the node's port, with its data in a volume the user owns.
func TestDockerfileRuntime(t *testing.T) {
	t.Parallel()
	d := parseDockerfile(t)
	final := d.stages[len(d.stages)-1]
	if _, ok := d.stage(d.baseImage(final)); ok {
		t.Errorf("Dockerfile: final stage is based on stage %s, want a minimal base image", final.BaseName)
	}
	if image := d.baseImage(final); !strings.HasPrefix(image, "gcr.io/distroless/static") && image != "scratch" {
		t.Errorf("Dockerfile: final image %q: want distroless static or scratch, for a static binary", image)
	}

	var (
		user        string
		env         = map[string]string{}
		exposed     = map[string]bool{}
		volumes     []string
		health      *instructions.HealthCheckCommand
		entrypoint  *instructions.EntrypointCommand
		cmd         *instructions.CmdCommand
		chownedDirs = map[string]string{}
	)
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env[kv.Key] = kv.Value
			}
		case *instructions.ExposeCommand:
			if len(c.Comments()) == 0 {
				t.Errorf("Dockerfile: EXPOSE %s has no comment saying what the port is", strings.Join(c.Ports, " "))
			}
			for _, p := range c.Ports {
				exposed[strings.TrimSuffix(p, "/tcp")] = true
			}
		case *instructions.VolumeCommand:
			volumes = append(volumes, c.Volumes...)
		case *instructions.HealthCheckCommand:
			health = c
		case *instructions.EntrypointCommand:
			entrypoint = c
		case *instructions.CmdCommand:
			cmd = c
		case *instructions.CopyCommand:
			if c.Chown != "" {
				chownedDirs[c.DestPath] = c.Chown
			}
		}
	}

	uid, _, _ := strings.Cut(user, ":")
	if uid == "" || uid == "root" || uid == "0" {
		t.Errorf("Dockerfile: final stage USER %q: want a non-root user set explicitly", user)
	}
	if entrypoint == nil || entrypoint.PrependShell || !slices.Equal(entrypoint.CmdLine, []string{imageBinary}) {
		t.Errorf("Dockerfile: want ENTRYPOINT [%q]", imageBinary)
	}
	if cmd == nil || cmd.PrependShell || !slices.Equal(cmd.CmdLine, []string{"node"}) {
		t.Error(`Dockerfile: want CMD ["node"]`)
	}
	for _, p := range []string{"7700", "7701", "9700", "9701"} {
		if !exposed[p] {
			t.Errorf("Dockerfile: port %s not exposed", p)
		}
	}

	node := fluxFlags(t, "node")
	for k := range env {
		if strings.HasPrefix(k, "FLUX_") {
			if _, ok := node[k]; !ok {
				t.Errorf("Dockerfile: ENV %s is not read by flux node, the default command", k)
			}
		}
	}
	listen := env["FLUX_LISTEN"]
	if h, _, err := net.SplitHostPort(listen); err != nil || net.ParseIP(h) == nil || !net.ParseIP(h).IsUnspecified() {
		t.Errorf("Dockerfile: FLUX_LISTEN %q: want the node's port on all addresses (0.0.0.0:7701)", listen)
	}
	dataDir := env["FLUX_DATA_DIR"]
	if dataDir == "" || !slices.Contains(volumes, dataDir) {
		t.Errorf("Dockerfile: FLUX_DATA_DIR %q: want the data directory set and declared a VOLUME (volumes %q)", dataDir, volumes)
	} else if chownedDirs[dataDir] != user {
		t.Errorf("Dockerfile: %s: created with owner %q, want the runtime user %q so the node can write to a new volume", dataDir, chownedDirs[dataDir], user)
	}

	if health == nil || health.Health == nil {
		t.Fatal("Dockerfile: no HEALTHCHECK")
	}
	values := checkHealthCommand(t, "Dockerfile HEALTHCHECK", health.Health.Test, listen)
	if values != nil && values["service"] != kvv1connect.KVServiceName {
		t.Errorf("Dockerfile: HEALTHCHECK --service %q: want %s", values["service"], kvv1connect.KVServiceName)
	}
	if h := health.Health; h.Timeout > 0 && h.Interval > 0 && h.Timeout > h.Interval {
		t.Errorf("Dockerfile: HEALTHCHECK timeout %v longer than its interval %v", h.Timeout, h.Interval)
	}
}

// TestREADMEDocker checks that README.md tells how to build the image and
// run the stack, with the image name compose.yaml uses.
func TestREADMEDocker(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join(moduleRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	project := loadCompose(t)
	m := regexp.MustCompile(`(?m)^\s*docker build -t (\S+) \.(\s+#.*)?$`).FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md: no `docker build -t <image> .` line")
	}
	for name := range fluxServices {
		if img := project.Services[name].Image; img != string(m[1]) && img+":latest" != string(m[1]) {
			t.Errorf("README.md builds image %q, but compose service %s runs %q", m[1], name, img)
		}
	}
	if !regexp.MustCompile(`(?m)^\s*docker compose up\b`).Match(readme) {
		t.Error("README.md: no `docker compose up` line")
	}
}
