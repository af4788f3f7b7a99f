package auth_test

import (
	"net/http"
	"os"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/auth"
)

func TestParseRejectsWhatItCannotRead(t *testing.T) {
	tok, err := auth.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"unknown scope", "owner " + auth.Hash(tok), "line 1: scope"},
		{"token in the clear", "read " + tok, "line 1: the hash must start with sha256:"},
		{"short hash", "read sha256:abcd", "line 1: sha256: needs 64 hex digits"},
		{"too many fields", "# c\nread " + auth.Hash(tok) + " a b", "line 2:"},
		{"twice", "read " + auth.Hash(tok) + "\nwrite " + auth.Hash(tok), "line 2: the same token is listed twice"},
	} {
		_, err := auth.Parse([]byte(tc.file))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), tok) {
			t.Errorf("%s: the error shows the token", tc.name)
		}
	}
	tokens, err := auth.Parse([]byte("\n# comment\nwrite " + auth.Hash(tok) + " ci\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := tokens.Lookup(tok); !ok || got.Scope != auth.ScopeWrite || got.Name != "ci" {
		t.Errorf("lookup: %+v, %v", got, ok)
	}
	if _, ok := tokens.Lookup(tok + "x"); ok {
		t.Error("another token was accepted")
	}
}

func TestRequiredScopes(t *testing.T) {
	for procedure, want := range map[string]auth.Scope{
		kvv1connect.KVServiceGetProcedure:                  auth.ScopeRead,
		kvv1connect.KVServiceScanProcedure:                 auth.ScopeRead,
		kvv1connect.KVServiceWatchProcedure:                auth.ScopeRead,
		kvv1connect.KVServicePutProcedure:                  auth.ScopeWrite,
		kvv1connect.KVServiceBatchProcedure:                auth.ScopeWrite,
		kvv1connect.KVServicePipelineProcedure:             auth.ScopeWrite,
		clusterv1connect.ClusterServiceStatusProcedure:     auth.ScopeRead,
		clusterv1connect.NodeServiceStatsProcedure:         auth.ScopeRead,
		clusterv1connect.ClusterServiceRemoveNodeProcedure: auth.ScopeAdmin,
		clusterv1connect.HandoffServiceCopyProcedure:       auth.ScopeAdmin,
		clusterv1connect.HandoffServiceFreezeProcedure:     auth.ScopeAdmin,
		"/no.such.Service/Method":                          auth.ScopeAdmin,
		"garbage":                                          auth.ScopeAdmin,
	} {
		if got := auth.Required(procedure); got != want {
			t.Errorf("%s needs %s, want %s", procedure, got, want)
		}
		if got := auth.RequiredBy(connect.Spec{Procedure: procedure}); got != want {
			t.Errorf("%s by spec needs %s, want %s", procedure, got, want)
		}
	}
}

// TestSecurityDocExampleParses: the token file in docs/security.md is one.
func TestSecurityDocExampleParses(t *testing.T) {
	doc, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```text\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/security.md has no text block")
	}
	tokens, err := auth.Parse([]byte(block))
	if err != nil {
		t.Fatalf("the example: %v", err)
	}
	if tokens.Len() != 3 {
		t.Fatalf("the example lists %d tokens, want 3", tokens.Len())
	}
}

// TestCheckReadsTheBearerScheme: the scheme is matched in any case (RFC
// 7235), anything else is refused as not a bearer token, and the RPC and
// admin answers agree.
func TestCheckReadsTheBearerScheme(t *testing.T) {
	t.Parallel()
	tok, err := auth.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := auth.Parse([]byte("write " + auth.Hash(tok) + " ci\n"))
	if err != nil {
		t.Fatal(err)
	}
	spec := connect.Spec{Procedure: "/flux.kv.v1.KVService/Put"}
	for _, tt := range []struct {
		header string
		want   connect.Code // 0: let through
	}{
		{"Bearer " + tok, 0},
		{"bearer " + tok, 0},
		{"BEARER  " + tok + " ", 0},
		{"Basic " + tok, connect.CodeUnauthenticated},
		{"Bearer" + tok, connect.CodeUnauthenticated},
		{tok, connect.CodeUnauthenticated},
		{"", connect.CodeUnauthenticated},
	} {
		h := http.Header{}
		if tt.header != "" {
			h.Set(auth.Header, tt.header)
		}
		_, err := auth.Check(tokens, h, spec)
		if got := connect.CodeOf(err); (err == nil) != (tt.want == 0) || err != nil && got != tt.want {
			t.Errorf("Check(%q): %v, want %v", strings.ReplaceAll(tt.header, tok, "<token>"), err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), tok) {
			t.Errorf("Check(%q): the error shows the token", strings.ReplaceAll(tt.header, tok, "<token>"))
		}
	}
}
