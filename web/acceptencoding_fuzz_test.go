package web_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/web"
)

// FuzzAcceptEncoding: whatever Accept-Encoding a browser or anything else
// sends for the console's script, the handler answers 200 with the script,
// gzip-compressed or not, with the matching ETag; and the choice does not
// depend on the case of the header's letters (codings and parameter names
// are case-insensitive), on another coding listed beside them, or hold
// against gzip listed with the default weight.
func FuzzAcceptEncoding(f *testing.F) {
	h := web.Handler()
	get := func(t *testing.T, acceptEncoding []string) (gzipped bool, etag string, body []byte) {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, "/console.js", nil)
		if acceptEncoding != nil {
			req.Header["Accept-Encoding"] = acceptEncoding
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("Accept-Encoding %q: status %d", acceptEncoding, rec.Code)
		}
		switch enc := rec.Header().Get("Content-Encoding"); enc {
		case "":
		case "gzip":
			gzipped = true
		default:
			t.Fatalf("Accept-Encoding %q: Content-Encoding %q", acceptEncoding, enc)
		}
		return gzipped, rec.Header().Get("ETag"), rec.Body.Bytes()
	}
	for _, seed := range []string{"gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0", "*;q=0.5", "identity", "GZIP;Q=0.001", "x-gzip;q=1e-3", "gzip;q=NaN", "*, gzip;q=0", ";q=;", "gzip;q=0x1p-1"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		_, plainETag, plain := get(t, nil)
		gzipped, etag, body := get(t, []string{header})
		if gzipped {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatalf("%q: %v", header, err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatalf("%q: %v", header, err)
			}
			if etag != strings.TrimSuffix(plainETag, `"`)+`-gzip"` {
				t.Fatalf("%q: ETag %s for the compressed script, %s for the plain one", header, etag, plainETag)
			}
		} else if etag != plainETag {
			t.Fatalf("%q: ETag %s for the plain script, want %s", header, etag, plainETag)
		}
		if !bytes.Equal(body, plain) {
			t.Fatalf("%q: the script differs", header)
		}

		if upper, _, _ := get(t, []string{asciiUpper(header)}); upper != gzipped {
			t.Fatalf("%q gets gzip %v, %q gets %v", header, gzipped, asciiUpper(header), upper)
		}
		if other, _, _ := get(t, []string{header, "br;q=0.9"}); other != gzipped {
			t.Fatalf("%q gets gzip %v, with br listed too %v", header, gzipped, other)
		}
		if listed, _, _ := get(t, []string{header + ", gzip"}); !listed {
			t.Fatalf("%q, gzip does not get gzip", header)
		}
	})
}

func asciiUpper(s string) string {
	return strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' {
			return r - 'a' + 'A'
		}
		return r
	}, s)
}
