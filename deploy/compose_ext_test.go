package deploy_test

import (
	"context"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
)

// fluxServices are the compose services that run the image built from this
// checkout, with the flux command each runs.
var fluxServices = map[string]string{
	"node-1":  "node",
	"node-2":  "node",
	"node-3":  "node",
	"gateway": "gateway",
}

// loadCompose loads compose.yaml the way `docker compose` does: schema
// validation, interpolation, merge keys, normalization.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root := moduleRoot(t)
	project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "compose.yaml")}},
		Environment: types.Mapping{},
	})
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}
	return project
}

// env returns a service's environment variable, failing the test if it is
// missing or left to the host's environment.
func env(t *testing.T, svc types.ServiceConfig, name string) string {
	t.Helper()
	v, ok := svc.Environment[name]
	if !ok || v == nil {
		t.Errorf("service %s: %s is not set", svc.Name, name)
		return ""
	}
	return *v
}

func TestComposeServices(t *testing.T) {
	t.Parallel()
	project := loadCompose(t)
	want := []string{"etcd", "gateway", "jaeger", "node-1", "node-2", "node-3", "rabbitmq"}
	if got := slices.Sorted(maps.Keys(project.Services)); !slices.Equal(got, want) {
		t.Fatalf("services: got %v, want %v", got, want)
	}
	root := moduleRoot(t)
	for name, svc := range project.Services {
		if command, ok := fluxServices[name]; ok {
			if svc.Build == nil || svc.Build.Context != root {
				t.Errorf("service %s: want build: . (the Dockerfile of this checkout), got %+v", name, svc.Build)
			}
			if len(svc.Command) == 0 || svc.Command[0] != command {
				t.Errorf("service %s: command %q: want flux %s", name, svc.Command, command)
			}
			continue
		}
		// Third-party images are pinned, so the stack does not change under
		// the user between two runs.
		ref := svc.Image
		if i := strings.LastIndex(ref, "/"); i >= 0 {
			ref = ref[i+1:]
		}
		if _, tag, ok := strings.Cut(ref, ":"); !ok || tag == "" || tag == "latest" {
			t.Errorf("service %s: image %q: want a pinned tag", name, svc.Image)
		}
	}
}

func TestComposeHealthChecks(t *testing.T) {
	t.Parallel()
	project := loadCompose(t)
	for name, svc := range project.Services {
		hc := svc.HealthCheck
		if hc == nil || hc.Disable || len(hc.Test) < 2 {
			t.Errorf("service %s: no health check", name)
			continue
		}
		// Exec form: the flux and etcd images have no shell.
		if hc.Test[0] != "CMD" {
			t.Errorf("service %s: health check %q: want exec form [CMD ...]", name, hc.Test)
		}
		command, ok := fluxServices[name]
		if !ok {
			continue
		}
		values := checkHealthCommand(t, "service "+name, hc.Test, env(t, svc, "FLUX_LISTEN"))
		// A node's health is its KV service's: it turns NOT_SERVING as soon
		// as the node starts shutting down.
		if command == "node" && values != nil && values["service"] != kvv1connect.KVServiceName {
			t.Errorf("service %s: health check --service %q: want %s", name, values["service"], kvv1connect.KVServiceName)
		}
	}
}

func TestComposeDependencies(t *testing.T) {
	t.Parallel()
	project := loadCompose(t)
	backing := []string{"etcd", "jaeger", "rabbitmq"}
	want := map[string][]string{
		"etcd":     nil,
		"rabbitmq": nil,
		"jaeger":   nil,
		"node-1":   backing,
		"node-2":   backing,
		"node-3":   backing,
		"gateway":  {"node-1", "node-2", "node-3"},
	}
	for name, svc := range project.Services {
		if got := slices.Sorted(maps.Keys(svc.DependsOn)); !slices.Equal(got, want[name]) {
			t.Errorf("service %s: depends on %v, want %v", name, got, want[name])
		}
		for dep, d := range svc.DependsOn {
			if d.Condition != types.ServiceConditionHealthy {
				t.Errorf("service %s: depends on %s with condition %q, want %s", name, dep, d.Condition, types.ServiceConditionHealthy)
			}
		}
	}
}

// dependsOn is the set of services that name waits for, directly or not.
func dependsOn(project *types.Project, name string) map[string]bool {
	seen := map[string]bool{}
	var walk func(string)
	walk = func(n string) {
		for dep := range project.Services[n].DependsOn {
			if !seen[dep] {
				seen[dep] = true
				walk(dep)
			}
		}
	}
	walk(name)
	return seen
}

func TestComposeVolumes(t *testing.T) {
	t.Parallel()
	project := loadCompose(t)
	etcdDataDir := ""
	for _, arg := range project.Services["etcd"].Command {
		if v, ok := strings.CutPrefix(arg, "--data-dir="); ok {
			etcdDataDir = v
		}
	}
	if etcdDataDir == "" {
		t.Errorf("service etcd: command %q has no --data-dir=", project.Services["etcd"].Command)
	}
	// Each stateful service mounts one named volume of its own where it
	// keeps its data.
	target := map[string]string{
		"etcd":     etcdDataDir,
		"rabbitmq": "/var/lib/rabbitmq",
	}
	for name, svc := range project.Services {
		if fluxServices[name] == "node" {
			target[name] = env(t, svc, "FLUX_DATA_DIR")
		}
	}
	owner := map[string]string{} // volume -> service
	for name, svc := range project.Services {
		var named []types.ServiceVolumeConfig
		for _, v := range svc.Volumes {
			if v.Type != types.VolumeTypeVolume {
				t.Errorf("service %s: %s mount %s:%s: want named volumes only, so the stack needs no host paths", name, v.Type, v.Source, v.Target)
				continue
			}
			if _, ok := project.Volumes[v.Source]; !ok {
				t.Errorf("service %s: volume %q is not declared under volumes:", name, v.Source)
			}
			if prev, ok := owner[v.Source]; ok {
				t.Errorf("volume %s: mounted by %s and %s, want one service each", v.Source, prev, name)
			}
			owner[v.Source] = name
			named = append(named, v)
		}
		want, stateful := target[name]
		switch {
		case !stateful && len(named) > 0:
			t.Errorf("service %s: mounts %d volumes, want none", name, len(named))
		case stateful && (len(named) != 1 || named[0].Target != want):
			t.Errorf("service %s: mounts %+v, want one named volume at %s", name, named, want)
		}
	}
	for v := range project.Volumes {
		if _, ok := owner[v]; !ok {
			t.Errorf("volume %s: declared but mounted by no service", v)
		}
	}
}

func TestComposePorts(t *testing.T) {
	t.Parallel()
	project := loadCompose(t)
	// Only what a user opens in a browser or points a client at: the
	// gateway (API and console), Jaeger's UI and RabbitMQ's management UI.
	// Nodes, admin ports, etcd, AMQP and OTLP stay on the compose network.
	want := []string{"gateway:7700", "jaeger:16686", "rabbitmq:15672"}
	var got []string
	for name, svc := range project.Services {
		for _, p := range svc.Ports {
			got = append(got, name+":"+p.Published)
			if p.Published != "" && p.Published != strconv.FormatUint(uint64(p.Target), 10) {
				t.Errorf("service %s: publishes container port %d on host port %s, want the same port", name, p.Target, p.Published)
			}
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("published ports: got %v, want %v", got, want)
	}
	gateway := project.Services["gateway"]
	if _, port, err := net.SplitHostPort(env(t, gateway, "FLUX_LISTEN")); err != nil || port != "7700" {
		t.Errorf("service gateway: FLUX_LISTEN %q: want the published port 7700", env(t, gateway, "FLUX_LISTEN"))
	}
}

// TestComposeFluxEnvironment checks that the flux services are configured
// only by variables their command reads, listen where others can reach
// them, advertise an address others can dial, and point at services they
// wait for.
func TestComposeFluxEnvironment(t *testing.T) {
	t.Parallel()
	project := loadCompose(t)
	nodeIDs := map[string]string{}
	for name, svc := range project.Services {
		command, ok := fluxServices[name]
		if !ok {
			for k := range svc.Environment {
				if strings.HasPrefix(k, "FLUX_") {
					t.Errorf("service %s: %s set on a service that does not run flux", name, k)
				}
			}
			continue
		}
		known := fluxFlags(t, command)
		for k, v := range svc.Environment {
			if !strings.HasPrefix(k, "FLUX_") {
				continue
			}
			if _, ok := known[k]; !ok {
				t.Errorf("service %s: %s is not read by flux %s (see flux %s --help)", name, k, command, command)
			}
			if v == nil || *v == "" {
				t.Errorf("service %s: %s has no value", name, k)
			}
		}

		listen := env(t, svc, "FLUX_LISTEN")
		host, port, err := net.SplitHostPort(listen)
		if err != nil {
			t.Errorf("service %s: FLUX_LISTEN %q: %v", name, listen, err)
		} else if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			t.Errorf("service %s: FLUX_LISTEN %q: want all addresses (0.0.0.0), or nobody outside the container reaches it", name, listen)
		}
		if admin := env(t, svc, "FLUX_ADMIN_LISTEN"); admin != "" {
			if h, _, err := net.SplitHostPort(admin); err != nil || net.ParseIP(h) == nil || !net.ParseIP(h).IsUnspecified() {
				t.Errorf("service %s: FLUX_ADMIN_LISTEN %q: want all addresses, for scrapes on the compose network", name, admin)
			}
		}
		// Others dial what a node registers in etcd: the service's name on
		// the compose network, never 0.0.0.0.
		if adv, want := env(t, svc, "FLUX_ADVERTISE"), net.JoinHostPort(name, port); adv != want {
			t.Errorf("service %s: FLUX_ADVERTISE %q, want %q", name, adv, want)
		}
		if command == "node" {
			id := env(t, svc, "FLUX_NODE_ID")
			if prev, ok := nodeIDs[id]; ok {
				t.Errorf("services %s and %s: same FLUX_NODE_ID %q", prev, name, id)
			}
			nodeIDs[id] = name
		}

		// Every backing service a flux service points at is one it waits for.
		deps := dependsOn(project, name)
		refs := map[string][]string{"FLUX_ETCD": strings.Split(env(t, svc, "FLUX_ETCD"), ",")}
		for _, k := range []string{"FLUX_AMQP_URL", "FLUX_OTLP_ENDPOINT"} {
			if v, ok := svc.Environment[k]; ok && v != nil {
				refs[k] = []string{*v}
			}
		}
		for k, values := range refs {
			for _, v := range values {
				h := refHost(v)
				if _, ok := project.Services[h]; !ok || !deps[h] {
					t.Errorf("service %s: %s %q: host %q is not a service it depends on", name, k, v, h)
				}
			}
		}
	}
	if len(nodeIDs) != 3 {
		t.Errorf("node ids: got %v, want 3", nodeIDs)
	}

	// The nodes join the etcd that etcd itself advertises.
	advertised := ""
	for _, arg := range project.Services["etcd"].Command {
		if v, ok := strings.CutPrefix(arg, "--advertise-client-urls="); ok {
			advertised = v
		}
	}
	for name := range fluxServices {
		if got := env(t, project.Services[name], "FLUX_ETCD"); got != advertised {
			t.Errorf("service %s: FLUX_ETCD %q, want etcd's advertised client URL %q", name, got, advertised)
		}
	}
}

// refHost is the host of a URL or host:port.
func refHost(s string) string {
	if strings.Contains(s, "://") {
		if u, err := url.Parse(s); err == nil {
			return u.Hostname()
		}
		return ""
	}
	h, _, err := net.SplitHostPort(s)
	if err != nil {
		return s
	}
	return h
}
