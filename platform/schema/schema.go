// Package schema holds the descriptors of Flux-KV's own protobuf files with
// their source comments, so gRPC reflection can show users the documentation
// written in proto/ (grpcurl describe, buf curl). Descriptors compiled into
// generated Go code carry no comments; flux.binpb is a Buf image of proto/,
// written by `go generate .` next to gen/ and checked by CI like it.
package schema

import (
	_ "embed"
	"fmt"
	"sync"

	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	// Registers grpc.health.v1 under its real name: connectrpc.com/grpchealth
	// registers its copy under a private package, which reflection clients
	// asking for grpc.health.v1.Health would not find.
	_ "google.golang.org/grpc/health/grpc_health_v1"
)

//go:embed flux.binpb
var image []byte

var files = sync.OnceValues(func() (*protoregistry.Files, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(image, &set); err != nil {
		return nil, fmt.Errorf("decode embedded schema image: %w", err)
	}
	reg, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, fmt.Errorf("link embedded schema image: %w", err)
	}
	return reg, nil
})

// Files returns the registry of Flux-KV's files (and their imports) with
// source comments. It fails only if the embedded image is corrupt, which a
// test guards against.
func Files() (*protoregistry.Files, error) { return files() }

// Resolver finds descriptors in Flux-KV's documented files first and in the
// process's global registry otherwise (gRPC health, for example).
func Resolver() (protodesc.Resolver, error) {
	reg, err := Files()
	if err != nil {
		return nil, err
	}
	return layered{reg, protoregistry.GlobalFiles}, nil
}

// NewReflector returns a gRPC reflection service for the named services that
// serves Flux-KV's descriptors with their comments.
func NewReflector(services ...string) (*grpcreflect.Reflector, error) {
	resolver, err := Resolver()
	if err != nil {
		return nil, err
	}
	return grpcreflect.NewReflector(grpcreflect.NamerFunc(func() []string { return services }),
		grpcreflect.WithDescriptorResolver(resolver)), nil
}

type layered []protodesc.Resolver

func (l layered) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	for _, r := range l {
		if fd, err := r.FindFileByPath(path); err == nil {
			return fd, nil
		}
	}
	return nil, protoregistry.NotFound
}

func (l layered) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	for _, r := range l {
		if d, err := r.FindDescriptorByName(name); err == nil {
			return d, nil
		}
	}
	return nil, protoregistry.NotFound
}
