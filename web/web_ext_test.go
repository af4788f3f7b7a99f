package web_test

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/fluxkv/fluxkv/web"
)

// TestHandler: the embedded console is served with fixed content types, a
// strong ETag that answers 304, no-cache, gzip for clients that accept it
// and a Content-Security-Policy; unknown files are 404, writes 405.
func TestHandler(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(web.Handler())
	t.Cleanup(srv.Close)
	// No transparent decompression: the test looks at what is sent.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(client.CloseIdleConnections)
	get := func(path string, header http.Header) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, vs := range header {
			req.Header[k] = vs
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	tests := []struct {
		path, file, contentType string
	}{
		{"/", "index.html", "text/html; charset=utf-8"},
		{"/index.html", "index.html", "text/html; charset=utf-8"},
		{"/console.js", "console.js", "text/javascript; charset=utf-8"},
		{"/console.css", "console.css", "text/css; charset=utf-8"},
	}
	for i, tt := range tests {
		want, err := os.ReadFile("dist/" + tt.file)
		if err != nil {
			t.Fatal(err)
		}
		resp, body := get(tt.path, nil)
		if resp.StatusCode != http.StatusOK || string(body) != string(want) {
			t.Errorf("#%d: GET %s: got %s and %d bytes, want 200 and dist/%s", i, tt.path, resp.Status, len(body), tt.file)
		}
		etag := resp.Header.Get("ETag")
		for name, want := range map[string]string{
			"Content-Type": tt.contentType, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
		} {
			if got := resp.Header.Get(name); got != want {
				t.Errorf("#%d: GET %s: %s %q, want %q", i, tt.path, name, got, want)
			}
		}
		if !strings.HasPrefix(etag, `"`) || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "connect-src 'self'") {
			t.Errorf("#%d: GET %s: ETag %q, Content-Security-Policy %q", i, tt.path, etag, resp.Header.Get("Content-Security-Policy"))
		}
		if resp, _ := get(tt.path, http.Header{"If-None-Match": {etag}}); resp.StatusCode != http.StatusNotModified {
			t.Errorf("#%d: GET %s with its ETag: got %s, want 304", i, tt.path, resp.Status)
		}

		resp, body = get(tt.path, http.Header{"Accept-Encoding": {"br, gzip"}})
		if resp.Header.Get("Content-Encoding") != "gzip" {
			// Small files are not worth compressing.
			if len(want) > 1024 {
				t.Errorf("#%d: GET %s accepting gzip: not compressed", i, tt.path)
			}
			continue
		}
		zr, err := gzip.NewReader(strings.NewReader(string(body)))
		if err != nil {
			t.Fatalf("#%d: %v", i, err)
		}
		plain, err := io.ReadAll(zr)
		if err != nil || string(plain) != string(want) {
			t.Errorf("#%d: GET %s gzipped: does not decompress to dist/%s (%v)", i, tt.path, tt.file, err)
		}
		if gzTag := resp.Header.Get("ETag"); gzTag == etag || resp.Header.Get("Vary") != "Accept-Encoding" {
			t.Errorf("#%d: GET %s gzipped: ETag %q (plain %q), Vary %q", i, tt.path, gzTag, etag, resp.Header.Get("Vary"))
		}
		if resp, _ := get(tt.path, http.Header{"Accept-Encoding": {"gzip;q=0"}}); resp.Header.Get("Content-Encoding") != "" {
			t.Errorf("#%d: GET %s refusing gzip: got it compressed", i, tt.path)
		}
	}

	if resp, _ := get("/nope.js", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nope.js: got %s, want 404", resp.Status)
	}
	resp, err := client.Post(srv.URL+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: got %s, Allow %q; want 405, GET, HEAD", resp.Status, resp.Header.Get("Allow"))
	}
}

// TestPageLoadsItsFiles: the page refers to the script and style sheet the
// build writes next to it, by relative URLs, so it works under any prefix.
func TestPageLoadsItsFiles(t *testing.T) {
	t.Parallel()
	page, err := os.ReadFile("dist/index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{`src="console.js"`, `href="console.css"`} {
		if !strings.Contains(string(page), ref) {
			t.Errorf("dist/index.html lacks %s", ref)
		}
	}
}

// TestAcceptEncoding: gzip goes to clients whose Accept-Encoding allows it
// by name or by "*", with any weight above zero, in any case.
func TestAcceptEncoding(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(web.Handler())
	t.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(client.CloseIdleConnections)
	tests := []struct {
		accept string
		gzip   bool
	}{
		{"", false},
		{"gzip", true},
		{"GZIP", true},
		{"x-gzip", true},
		{"br, gzip", true},
		{"gzip;q=0", false},
		{"gzip; q=0", false},
		{"gzip;Q=0", false},
		{"gzip;q=0.000", false},
		{"gzip;q=0.001", true},
		{"gzip;q=0.5", true},
		{"gzip ; Q=0.5", true},
		{"gzip;q=1", true},
		{"gzip;q=nonsense", false},
		{"gzip;q=NaN", false},
		{"*", true},
		{"*;q=0", false},
		{"br, *;q=0.1", true},
		{"gzip;q=0, *", false}, // named beats "*"
		{"*;q=0, gzip", true},
		{"identity", false},
		{"br", false},
	}
	for i, tt := range tests {
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/console.js", nil)
		if err != nil {
			t.Fatal(err)
		}
		if tt.accept != "" {
			req.Header.Set("Accept-Encoding", tt.accept)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("Content-Encoding") == "gzip"; got != tt.gzip {
			t.Errorf("#%d: Accept-Encoding %q: got gzip %v, want %v", i, tt.accept, got, tt.gzip)
		}
	}
}
