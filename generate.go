// Package fluxkv is the root of the Flux-KV module. It holds no code of its
// own: the binary is cmd/flux, the libraries are under platform/ and the
// deployable services under services/.
//
// Running `go generate .` here regenerates gen/ (Go, and TypeScript in gen/ts) from the
// schemas in proto/, using only the Go module proxy and npm: protovalidate's
// schema is printed from the Go module that registers it, then buf runs the
// Go plugins pinned in go.mod and protoc-gen-es, pinned by
// package-lock.json (install it first: npm ci).
// Last, docs/api.md is written from the image of proto/ that buf builds,
// which holds the schemas' comments.
package fluxkv

//go:generate go -C tools run ./protovalidateproto -out ../.buf-deps/protovalidate
//go:generate go tool -modfile=tools/go.mod buf generate
//go:generate go tool -modfile=tools/go.mod buf build proto -o platform/schema/flux.binpb
//go:generate go run ./internal/cmd/apidoc -out docs/api.md
