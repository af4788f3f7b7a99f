// Command protovalidateproto writes buf/validate/validate.proto, printed from the
// descriptor that the protovalidate Go module registers, under a directory that
// buf.yaml declares as a second module.
//
// The Buf Schema Registry is not reachable where Flux-KV is built, so the
// dependency cannot come from buf.lock. The Go module is pinned in tools/go.mod
// at the same version the server links, so the schema buf compiles against is
// the one the validator enforces.
package main

import (
	"flag"
	"fmt"
	"os"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/jhump/protoreflect/v2/protoprint"
	"google.golang.org/protobuf/reflect/protoreflect"
)

func main() {
	out := flag.String("out", "", "directory to write buf/validate/validate.proto into")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "protovalidateproto: -out is required")
		os.Exit(2)
	}
	if err := run(*out); err != nil {
		fmt.Fprintf(os.Stderr, "protovalidateproto: %v\n", err)
		os.Exit(1)
	}
}

func run(out string) error {
	if err := os.RemoveAll(out); err != nil {
		return fmt.Errorf("clean %s: %w", out, err)
	}
	printer := &protoprint.Printer{}
	fds := []protoreflect.FileDescriptor{validatepb.File_buf_validate_validate_proto}
	if err := printer.PrintProtosToFileSystem(fds, out); err != nil {
		return fmt.Errorf("print validate.proto: %w", err)
	}
	return nil
}
