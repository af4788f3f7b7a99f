# syntax=docker/dockerfile:1

# The Flux-KV image: the one static `flux` binary on a distroless base, run as
# a non-root user. Build it (BuildKit, the default builder of Docker 23+) with
#
#   docker build -t fluxkv/flux .
#   docker build -t fluxkv/flux:v1.2.3 --build-arg VERSION=v1.2.3 .
#
# Its default command runs a standalone node on all addresses with its data in
# the /data volume (docker run -p 7701:7701 fluxkv/flux). Every role is the
# same binary: pass another command (gateway, cdc tail, get...) and its flags
# or FLUX_ variables. compose.yaml runs the whole stack.

ARG GO_VERSION=1.26

# The builder runs on the build machine's platform and cross-compiles, so a
# multi-platform build (--platform linux/amd64,linux/arm64) never emulates Go.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first: editing the source then reuses this layer and the cache.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG VERSION=devel
ARG TARGETOS
ARG TARGETARCH
# -X stamps the version `flux version` and the logs print; -s -w drop the
# symbol table and DWARF, -trimpath the build machine's paths.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath \
        -ldflags "-s -w -X github.com/fluxkv/fluxkv/platform/buildinfo.Version=${VERSION}" \
        -o /out/flux ./cmd/flux \
 && mkdir -p /out/data

# Static base: CA certificates, tzdata and /etc/passwd with the nonroot user
# (65532); no shell, no package manager.
FROM gcr.io/distroless/static-debian13:nonroot
ARG VERSION=devel
LABEL org.opencontainers.image.title="flux" \
      org.opencontainers.image.description="Flux-KV: a distributed in-memory key-value store with a schema-first API" \
      org.opencontainers.image.source="https://github.com/fluxkv/fluxkv" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/flux /flux
# An empty /data owned by the runtime user: Docker copies its ownership into
# a new named volume mounted there, so the node can write to it.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532

# Defaults for the default command, `flux node`: listen on all addresses (a
# loopback listener is unreachable from outside the container) and keep the
# data in the volume. FLUX_LISTEN and FLUX_ADMIN_LISTEN are also read by
# `flux gateway`, which must be given its own (compose.yaml does).
ENV FLUX_LISTEN=0.0.0.0:7701 \
    FLUX_ADMIN_LISTEN=0.0.0.0:9701 \
    FLUX_DATA_DIR=/data

# Gateway API: gRPC, gRPC-Web and Connect over h2c, and the web console.
EXPOSE 7700
# Gateway admin: /healthz, /metrics, /debug/pprof/, /breakers; keep it private.
EXPOSE 9700
# Node API: gRPC, gRPC-Web and Connect over h2c.
EXPOSE 7701
# Node admin: /healthz, /metrics, /debug/pprof/; keep it private.
EXPOSE 9701

VOLUME ["/data"]

# The node's API port answers gRPC health for flux.kv.v1.KVService once it
# has joined its cluster; `flux health` exits non-zero otherwise. A gateway
# container must override this check with its own port (compose.yaml does).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --start-interval=1s --retries=3 \
    CMD ["/flux", "health", "--endpoint", "http://127.0.0.1:7701", "--service", "flux.kv.v1.KVService", "--timeout", "3s"]

ENTRYPOINT ["/flux"]
CMD ["node"]
