// Command apidoc writes docs/api.md, the reference of Flux-KV's protobuf
// API, from the comments in proto/. It reads the Buf image that
// platform/schema embeds (the descriptors of proto/ with their source
// comments), so it needs no protoc and no network, and its output depends
// on the schemas alone: `go generate .` runs it after writing the image,
// and CI checks that the result is committed.
//
// Usage:
//
//	go run ./internal/cmd/apidoc -out docs/api.md
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/fluxkv/fluxkv/platform/schema"
)

func main() {
	out := flag.String("out", "-", "`file` to write the Markdown to; - for standard output")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "apidoc: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if err := run(*out); err != nil {
		fmt.Fprintf(os.Stderr, "apidoc: %v\n", err)
		os.Exit(1)
	}
}

func run(out string) error {
	files, err := schema.Files()
	if err != nil {
		return err
	}
	doc, err := render(files)
	if err != nil {
		return err
	}
	if out == "-" {
		_, err := os.Stdout.Write(doc)
		return err
	}
	if err := os.WriteFile(out, doc, 0o644); err != nil {
		return fmt.Errorf("write api reference: %w", err)
	}
	return nil
}
