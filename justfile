# Recipes for working on Flux-KV. Each wraps plain go commands, written out
# here so nobody needs just to run them (see README.md).

buf := "go tool -modfile=tools/go.mod buf"

default: test

# Regenerate gen/ from proto/ (offline but for the Go module proxy).
generate:
    go generate .

# Print protovalidate's schema, which buf.yaml's second module needs.
deps:
    go -C tools run ./protovalidateproto -out ../.buf-deps/protovalidate

# Schema lint and format, go vet, gofmt.
lint: deps
    {{buf}} lint
    {{buf}} format proto --diff --exit-code
    go vet ./...
    test -z "$(gofmt -l $(git ls-files '*.go' | grep -v '^gen/'))"

# Every test, with the race detector, as CI runs them.
test:
    go test -race ./...

# Engine benchmarks: sharded map vs single-lock map vs sync.Map.
bench:
    go test -run '^$' -bench . -benchmem -cpu 1,2 ./platform/store/

# Flux-KV against Redis and against itself on this machine (about four
# minutes; needs Redis and RabbitMQ on loopback): docs/benchmarks.md, with its
# charts and raw results in docs/bench/.
bench-report:
    go run ./internal/cmd/benchreport -out docs/benchmarks.md

# Run one node with the defaults (API on 127.0.0.1:7701).
run *ARGS:
    go run ./cmd/flux node {{ARGS}}
