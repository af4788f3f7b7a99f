package auth_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/auth"
)

// FuzzCheckHeader: whatever Authorization header a caller sends, the RPC
// check and the admin port's never panic, let a call through only for a
// listed token (in the header) whose scope the call needs, and answer
// depending only on which listed token the header carries, if any: never
// with the bytes it holds, which may be a token. The two agree on every
// header.
func FuzzCheckHeader(f *testing.F) {
	raw := map[string]string{"r": "flux_readToken1", "w": "flux_writeToken2", "a": "flux_adminToken3"}
	file := "read " + auth.Hash(raw["r"]) + " r\nwrite " + auth.Hash(raw["w"]) + " w\nadmin " + auth.Hash(raw["a"]) + " a\n"
	path := filepath.Join(f.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		f.Fatal(err)
	}
	tf, err := auth.Open(path)
	if err != nil {
		f.Fatal(err)
	}
	admin := auth.AdminHandler(tf, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	procedures := []string{
		kvv1connect.KVServiceGetProcedure,                  // read
		kvv1connect.KVServicePutProcedure,                  // write
		clusterv1connect.ClusterServiceRemoveNodeProcedure, // admin
		"/acme.unknown.v1.Service/Call",                    // admin: unknown
	}
	check := func(header, procedure string) (auth.Token, error) {
		return auth.Check(tf.Tokens(), http.Header{auth.Header: {header}}, connect.Spec{Procedure: procedure})
	}
	adminAnswer := func(header string) (int, string) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header[auth.Header] = []string{header}
		admin.ServeHTTP(rec, req)
		return rec.Code, rec.Body.String()
	}
	// The answers to a header without a listed token, which any other
	// such header must get word for word.
	var refusals, adminRefusals []string
	for _, header := range []string{"", "Basic eDp5", "Bearer flux_unlisted"} {
		for _, p := range procedures {
			_, err := check(header, p)
			refusals = append(refusals, err.Error())
		}
		_, body := adminAnswer(header)
		adminRefusals = append(adminRefusals, body)
	}

	for _, header := range []string{"Bearer " + raw["r"], "Bearer  " + raw["a"] + " \t", "bearer " + raw["w"], "Basic eDp5", "", "Bearer ", "Bearer " + raw["w"] + "\x00", raw["a"]} {
		for i := range procedures {
			f.Add(header, uint8(i))
		}
	}
	f.Fuzz(func(t *testing.T, header string, pick uint8) {
		procedure := procedures[int(pick)%len(procedures)]
		tok, err := check(header, procedure)
		code, body := adminAnswer(header)
		switch {
		case err == nil, connect.CodeOf(err) == connect.CodePermissionDenied:
		case connect.CodeOf(err) == connect.CodeUnauthenticated:
			if !slices.Contains(refusals, err.Error()) {
				t.Fatalf("%q for %s: refused with %q", header, procedure, err)
			}
			if code != http.StatusUnauthorized || !slices.Contains(adminRefusals, body) {
				t.Fatalf("%q: refused by RPC, %d %q on the admin port", header, code, body)
			}
			return
		default:
			t.Fatalf("%q for %s: %v", header, procedure, err)
		}

		// The header carries a listed token: the answer must be the one
		// that token alone gets.
		token, ok := raw[tok.Name]
		if !ok || !strings.Contains(header, token) {
			t.Fatalf("%q for %s: taken for token %+v", header, procedure, tok)
		}
		want, wantErr := check("Bearer "+token, procedure)
		if tok != want || (err == nil) != (wantErr == nil) || err != nil && err.Error() != wantErr.Error() {
			t.Fatalf("%q for %s: %+v, %v; the token alone: %+v, %v", header, procedure, tok, err, want, wantErr)
		}
		if err == nil && tok.Scope < auth.Required(procedure) {
			t.Fatalf("%q for %s: let through with scope %s", header, procedure, tok.Scope)
		}
		wantCode, wantBody := adminAnswer("Bearer " + token)
		if code != wantCode || body != wantBody || (code == http.StatusOK) != (tok.Scope == auth.ScopeAdmin) {
			t.Fatalf("%q: %d %q on the admin port; the token alone: %d %q", header, code, body, wantCode, wantBody)
		}
	})
}
