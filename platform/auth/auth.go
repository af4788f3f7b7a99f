// Package auth checks bearer tokens on Flux-KV's APIs.
//
// Tokens are listed in a file (--auth-file), one per line, by their SHA-256
// hash, never in the clear:
//
//	# scope  hash                                                                    name
//	write    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 ci
//
// A scope is read, write or admin; each includes the ones before it. read
// may call the methods declared without side effects (idempotency_level
// NO_SIDE_EFFECTS) and the server-streaming ones (Watch); write also every
// other method of flux.kv.v1 and of services that are not Flux-KV's own;
// admin also the cluster's operations (flux.cluster.v1 methods with side
// effects: removing a node, moving keys between nodes). A call without a
// valid token fails with Unauthenticated, one whose token's scope is too
// small with PermissionDenied. Health checks stay open, and so does server
// reflection unless the server guards it (then it needs read). The admin
// port's endpoints, but its health check, need admin (AdminHandler).
// Tokens never appear in errors or logs; a token's name does.
package auth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Scope is what a token may do.
type Scope int

// Scopes, each including the ones before it.
const (
	ScopeNone Scope = iota
	ScopeRead
	ScopeWrite
	ScopeAdmin
)

func (s Scope) String() string {
	switch s {
	case ScopeRead:
		return "read"
	case ScopeWrite:
		return "write"
	case ScopeAdmin:
		return "admin"
	}
	return "none"
}

// ParseScope parses "read", "write" or "admin".
func ParseScope(s string) (Scope, error) {
	switch s {
	case "read":
		return ScopeRead, nil
	case "write":
		return ScopeWrite, nil
	case "admin":
		return ScopeAdmin, nil
	}
	return ScopeNone, fmt.Errorf("scope %q: want read, write or admin", s)
}

// Token is one entry of a token file.
type Token struct {
	Name  string // for logs and errors; the hash's first 8 hex digits when the file gives none
	Scope Scope
}

// Tokens are the tokens of one file, by the hex SHA-256 of the token.
type Tokens struct {
	byHash map[string]Token
}

// Hash returns how a token file names token: "sha256:" and its hex
// SHA-256.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// NewToken returns a new random token: 32 bytes from crypto/rand, in
// unpadded URL-safe base64, prefixed "flux_".
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "flux_" + base64.RawURLEncoding.EncodeToString(b), nil
}

// Parse reads a token file. Each line is "scope sha256:<hex> [name]";
// blank lines and lines starting with # are skipped. Any other line is an
// error naming its number, so a typo never silently drops a token.
func Parse(data []byte) (*Tokens, error) {
	t := &Tokens{byHash: map[string]Token{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || len(fields) > 3 {
			return nil, fmt.Errorf("line %d: want \"scope sha256:<hex> [name]\"", n)
		}
		scope, err := ParseScope(fields[0])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		hexHash, ok := strings.CutPrefix(fields[1], "sha256:")
		if !ok {
			return nil, fmt.Errorf("line %d: the hash must start with sha256: (the file never holds tokens in the clear)", n)
		}
		sum, err := hex.DecodeString(hexHash)
		if err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("line %d: sha256: needs 64 hex digits", n)
		}
		key := hex.EncodeToString(sum)
		if _, dup := t.byHash[key]; dup {
			return nil, fmt.Errorf("line %d: the same token is listed twice", n)
		}
		name := key[:8]
		if len(fields) == 3 {
			name = fields[2]
		}
		t.byHash[key] = Token{Name: name, Scope: scope}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return t, nil
}

// Lookup returns the entry of token, if listed.
func (t *Tokens) Lookup(token string) (Token, bool) {
	sum := sha256.Sum256([]byte(token))
	e, ok := t.byHash[hex.EncodeToString(sum[:])]
	return e, ok
}

// Len is the number of tokens.
func (t *Tokens) Len() int { return len(t.byHash) }

// File is a token file that can be read again (on SIGHUP): calls in
// flight keep the tokens they were checked against, later ones use the new.
type File struct {
	path   string
	tokens atomic.Pointer[Tokens]
	mu     sync.Mutex       // serializes Allow and Reload's store
	extra  map[string]Token // set by Allow; kept across reloads
}

// Allow adds a token that is not in the file and stays across reloads (a
// process's own token for its peers, as flux dev makes one). It is safe
// to call while the file is in use and reloaded.
func (f *File) Allow(token string, scope Scope, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.extra == nil {
		f.extra = map[string]Token{}
	}
	sum := sha256.Sum256([]byte(token))
	f.extra[hex.EncodeToString(sum[:])] = Token{Name: name, Scope: scope}
	if t := f.tokens.Load(); t != nil {
		f.tokens.Store(t.with(f.extra))
	}
}

func (t *Tokens) with(extra map[string]Token) *Tokens {
	out := &Tokens{byHash: make(map[string]Token, len(t.byHash)+len(extra))}
	for k, v := range t.byHash {
		out.byHash[k] = v
	}
	for k, v := range extra {
		out.byHash[k] = v
	}
	return out
}

// Open reads the token file at path.
func Open(path string) (*File, error) {
	f := &File{path: path}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload reads the file again. On error the tokens read before stay.
func (f *File) Reload() error {
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("read token file: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return fmt.Errorf("token file %s: %w", f.path, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens.Store(t.with(f.extra))
	return nil
}

// Tokens returns the tokens read last.
func (f *File) Tokens() *Tokens { return f.tokens.Load() }

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Required returns the scope a call to procedure ("/pkg.Service/Method")
// needs, from the method's descriptor in the global registry; admin for a
// procedure it does not know.
func Required(procedure string) Scope {
	service, method, ok := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	if !ok {
		return ScopeAdmin
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return ScopeAdmin
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return ScopeAdmin
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return ScopeAdmin
	}
	return RequiredFor(md)
}

// RequiredFor returns the scope a call to md needs (see the package
// documentation).
func RequiredFor(md protoreflect.MethodDescriptor) Scope {
	opts, _ := md.Options().(*descriptorpb.MethodOptions)
	if opts.GetIdempotencyLevel() == descriptorpb.MethodOptions_NO_SIDE_EFFECTS {
		return ScopeRead
	}
	if md.Parent().ParentFile().Package() == "flux.cluster.v1" {
		return ScopeAdmin
	}
	if md.IsStreamingServer() && !md.IsStreamingClient() {
		return ScopeRead
	}
	return ScopeWrite
}

// Header is where a token travels: "Authorization: Bearer <token>".
const Header = "Authorization"

// ErrNoToken and ErrBadToken are the causes of Unauthenticated answers.
var (
	ErrNoToken  = errors.New("missing bearer token: send Authorization: Bearer <token>")
	ErrBadToken = errors.New("invalid bearer token")
)

// RequiredBy returns the scope a call described by spec needs: from its
// method descriptor when the handler has one (generated handlers, and the
// gateway's for the services it discovers), else from the registry by
// procedure (Required).
func RequiredBy(spec connect.Spec) Scope {
	if isReflection(spec.Procedure) {
		// A bidi stream, but it only reads the schema.
		return ScopeRead
	}
	if md, ok := spec.Schema.(protoreflect.MethodDescriptor); ok {
		return RequiredFor(md)
	}
	return Required(spec.Procedure)
}

// Check returns the token that h carries if it may make the call spec
// describes, or the Connect error to answer: Unauthenticated or
// PermissionDenied.
func Check(tokens *Tokens, h interface{ Get(string) string }, spec connect.Spec) (Token, error) {
	procedure := spec.Procedure
	tok, err := presented(tokens, h.Get(Header))
	if err != nil {
		return Token{}, connect.NewError(connect.CodeUnauthenticated, err)
	}
	if need := RequiredBy(spec); tok.Scope < need {
		return tok, connect.NewError(connect.CodePermissionDenied, fmt.Errorf(
			"token %q has scope %s; %s needs %s", tok.Name, tok.Scope, procedure, need))
	}
	return tok, nil
}

// errNotBearer answers an Authorization header of another scheme.
var errNotBearer = errors.New("the Authorization header is not a bearer token")

// presented returns the listed token that an Authorization header value
// carries: "Bearer <token>", the scheme in any case (RFC 7235).
func presented(tokens *Tokens, value string) (Token, error) {
	if value == "" {
		return Token{}, ErrNoToken
	}
	scheme, raw, ok := strings.Cut(value, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return Token{}, errNotBearer
	}
	tok, ok := tokens.Lookup(strings.TrimSpace(raw))
	if !ok {
		return Token{}, ErrBadToken
	}
	return tok, nil
}

// Interceptor checks the bearer token of every call it sees against the
// file's tokens, except health checks, which load balancers and
// orchestrators make without one, and server reflection, which describes
// the schema only, unless guardReflection is set (it then needs read).
// With a nil file it lets everything through.
func Interceptor(f *File, guardReflection bool) connect.Interceptor {
	return interceptor{f: f, guardReflection: guardReflection}
}

type interceptor struct {
	f               *File
	guardReflection bool
}

// open reports whether procedure needs no token.
func (i interceptor) open(procedure string) bool {
	return strings.HasPrefix(procedure, "/grpc.health.v1.Health/") || (!i.guardReflection && isReflection(procedure))
}

func isReflection(procedure string) bool { return strings.HasPrefix(procedure, "/grpc.reflection.") }

func (i interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if i.f != nil && !req.Spec().IsClient && !i.open(req.Spec().Procedure) {
			if _, err := Check(i.f.Tokens(), req.Header(), req.Spec()); err != nil {
				return nil, err
			}
		}
		return next(ctx, req)
	}
}

func (i interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if i.f != nil && !i.open(conn.Spec().Procedure) {
			if _, err := Check(i.f.Tokens(), conn.RequestHeader(), conn.Spec()); err != nil {
				return err
			}
		}
		return next(ctx, conn)
	}
}

// Bearer returns a client interceptor that sends token on every call
// (unary and streaming) that carries no Authorization header already; an
// empty token sends nothing. On a stream it decides when the stream is
// created, before the caller can set headers of its own, so a client that
// passes a caller's token on (a proxy) must not use it.
func Bearer(token string) connect.Interceptor { return bearer(token) }

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if b != "" && req.Spec().IsClient && req.Header().Get(Header) == "" {
			req.Header().Set(Header, "Bearer "+string(b))
		}
		return next(ctx, req)
	}
}

func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if b != "" && conn.RequestHeader().Get(Header) == "" {
			conn.RequestHeader().Set(Header, "Bearer "+string(b))
		}
		return conn
	}
}

func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// AdminHandler guards a process's admin endpoints (metrics, profiles,
// circuit states) with f: every request but GET /healthz needs a bearer
// token of the admin scope. With a nil file it returns h unchanged.
func AdminHandler(f *File, h http.Handler) http.Handler {
	if f == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			h.ServeHTTP(w, r)
			return
		}
		code, err := checkAdmin(f.Tokens(), r.Header)
		if err != nil {
			if code == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="flux admin"`)
			}
			http.Error(w, err.Error(), code)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// checkAdmin is Check for the admin port's plain HTTP requests: 401 for a
// missing or unknown token, 403 for one without the admin scope.
func checkAdmin(tokens *Tokens, h http.Header) (int, error) {
	tok, err := presented(tokens, h.Get(Header))
	if err != nil {
		return http.StatusUnauthorized, err
	}
	if tok.Scope < ScopeAdmin {
		return http.StatusForbidden, fmt.Errorf("token %q has scope %s; the admin port needs %s", tok.Name, tok.Scope, ScopeAdmin)
	}
	return http.StatusOK, nil
}
