package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"connectrpc.com/connect"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/schema"
)

// schemaSource finds the descriptors of a service: compiled in for
// Flux-KV's own services (with their documentation), by gRPC server
// reflection from a live instance for any other.
type schemaSource struct {
	http   connect.HTTPClient
	token  string             // the gateway's peer token, for instances that guard reflection
	local  protodesc.Resolver // Flux-KV's files, then the process's
	global *protoregistry.Files
}

func newSchemaSource(httpClient connect.HTTPClient, token string) (*schemaSource, error) {
	local, err := schema.Resolver()
	if err != nil {
		return nil, err
	}
	return &schemaSource{http: httpClient, token: token, local: local, global: protoregistry.GlobalFiles}, nil
}

// resolved is a service's descriptor and the files that define it, for
// gRPC reflection.
type resolved struct {
	service protoreflect.ServiceDescriptor
	files   protodesc.Resolver
}

// resolve returns the descriptor of service, asking the instance at baseURL by
// reflection when it is not compiled in.
func (s *schemaSource) resolve(ctx context.Context, service, baseURL string) (*resolved, error) {
	if res, ok := s.compiled(service); ok {
		return res, nil
	}
	client := grpcreflect.NewClient(s.http, baseURL, connect.WithGRPC(), connect.WithInterceptors(auth.Bearer(s.token)))
	stream := client.NewStream(ctx)
	defer stream.Close()
	protos := map[string]*descriptorpb.FileDescriptorProto{}
	fds, err := stream.FileContainingSymbol(protoreflect.FullName(service))
	if err != nil {
		return nil, fmt.Errorf("reflection on %s for %s: %w", baseURL, service, err)
	}
	for _, fd := range fds {
		protos[fd.GetName()] = fd
	}
	// Fetch dependencies the server did not send, unless this process
	// knows them (well-known types).
	for {
		var missing []string
		for _, fd := range protos {
			for _, dep := range fd.GetDependency() {
				if _, ok := protos[dep]; ok {
					continue
				}
				if _, err := s.global.FindFileByPath(dep); err == nil {
					continue
				}
				missing = append(missing, dep)
			}
		}
		if len(missing) == 0 {
			break
		}
		for _, name := range missing {
			more, err := stream.FileByFilename(name)
			if err != nil {
				return nil, fmt.Errorf("reflection on %s for file %s: %w", baseURL, name, err)
			}
			for _, fd := range more {
				protos[fd.GetName()] = fd
			}
			if _, ok := protos[name]; !ok {
				return nil, fmt.Errorf("reflection on %s did not return file %s", baseURL, name)
			}
		}
	}
	files, err := s.link(protos)
	if err != nil {
		return nil, fmt.Errorf("schema of %s from %s: %w", service, baseURL, err)
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return nil, fmt.Errorf("%s: reflection on %s did not describe it: %w", service, baseURL, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is a %T, not a service", service, d)
	}
	return &resolved{service: sd, files: files}, nil
}

// compiled returns the descriptor of service if it is compiled in.
func (s *schemaSource) compiled(service string) (*resolved, bool) {
	d, err := s.local.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return nil, false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, false
	}
	return &resolved{service: sd, files: s.local}, true
}

// link builds the files in dependency order. A file this process already
// knows under the same path is taken from it, so well-known types and
// extensions Flux-KV reads (flux.routing.v1.shard_key) keep one identity.
func (s *schemaSource) link(protos map[string]*descriptorpb.FileDescriptorProto) (*layeredFiles, error) {
	reg := new(protoregistry.Files)
	resolver := &layeredFiles{reg, s.global}
	names := make([]string, 0, len(protos))
	for name := range protos {
		names = append(names, name)
	}
	slices.Sort(names)
	var visit func(name string, seen map[string]bool) error
	visit = func(name string, seen map[string]bool) error {
		if _, err := resolver.FindFileByPath(name); err == nil {
			return nil
		}
		if seen[name] {
			return fmt.Errorf("import cycle through %s", name)
		}
		seen[name] = true
		fdp, ok := protos[name]
		if !ok {
			return fmt.Errorf("file %s is missing", name)
		}
		for _, dep := range fdp.GetDependency() {
			if err := visit(dep, seen); err != nil {
				return err
			}
		}
		fd, err := protodesc.NewFile(fdp, resolver)
		if err != nil {
			return err
		}
		return reg.RegisterFile(fd)
	}
	for _, name := range names {
		if err := visit(name, map[string]bool{}); err != nil {
			return nil, err
		}
	}
	return resolver, nil
}

// layeredFiles resolves from the files fetched for one service first, then
// from the process's registry.
type layeredFiles struct {
	own    *protoregistry.Files
	global *protoregistry.Files
}

func (l *layeredFiles) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	if fd, err := l.own.FindFileByPath(path); err == nil {
		return fd, nil
	}
	return l.global.FindFileByPath(path)
}

func (l *layeredFiles) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	if d, err := l.own.FindDescriptorByName(name); err == nil {
		return d, nil
	}
	return l.global.FindDescriptorByName(name)
}

// unionResolver answers reflection for every service the gateway serves:
// each lookup tries the files of each service in turn.
type unionResolver struct {
	services func() []*resolved
}

func (u unionResolver) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	for _, r := range u.services() {
		if fd, err := r.files.FindFileByPath(path); err == nil {
			return fd, nil
		}
	}
	return protoregistry.GlobalFiles.FindFileByPath(path)
}

func (u unionResolver) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	for _, r := range u.services() {
		if d, err := r.files.FindDescriptorByName(name); err == nil {
			return d, nil
		}
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if errors.Is(err, protoregistry.NotFound) {
		return nil, protoregistry.NotFound
	}
	return d, err
}

var _ connect.HTTPClient = (*http.Client)(nil)
