// Package deploy holds no code. Its tests check the deployment files at the
// root of the module without a Docker engine: the Dockerfile (parsed by
// BuildKit's own parser), .dockerignore, and compose.yaml (loaded by the
// Compose Specification's Go loader), against each other, against README.md
// and against the flags the flux binary actually has.
package deploy
