// Package web holds the Flux-KV web console: the page, script and style
// sheet that `npm run build --workspace web` builds from web/src into
// web/dist. The built files are committed, like gen/, and embedded here,
// so the flux binary serves the console without a build step at run time.
//
// Handler serves them; the gateway mounts it at /ui/.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

//go:embed dist
var dist embed.FS

// contentTypes are the types of the files a build writes. They are fixed
// here, not looked up, because the system's MIME tables vary by host.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".png":  "image/png",
	".svg":  "image/svg+xml",
	".json": "application/json",
}

// securityHeaders keep the page to its own origin: its script, its style
// sheet and calls to the gateway that serves it. Nothing may frame it.
var securityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
	"Referrer-Policy":        "no-referrer",
	"X-Content-Type-Options": "nosniff",
}

// asset is one file, ready to serve.
type asset struct {
	name        string
	contentType string
	etag        string // strong, of the content
	body        []byte
	gzipped     []byte // nil when compressing does not pay
}

var assets = sync.OnceValues(func() (map[string]*asset, error) {
	out := map[string]*asset{}
	err := fs.WalkDir(dist, "dist", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := dist.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		a := &asset{
			name:        strings.TrimPrefix(p, "dist/"),
			contentType: contentTypes[path.Ext(p)],
			etag:        `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`,
			body:        body,
		}
		if a.contentType == "" {
			a.contentType = "application/octet-stream"
		}
		if strings.HasPrefix(a.contentType, "text/") || a.contentType == "application/json" || a.contentType == "image/svg+xml" {
			var buf bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
			_, _ = zw.Write(body)
			if err := zw.Close(); err != nil {
				return err
			}
			if buf.Len() < len(body)*9/10 {
				a.gzipped = buf.Bytes()
			}
		}
		out[a.name] = a
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the embedded console: %w", err)
	}
	if out["index.html"] == nil {
		return nil, fmt.Errorf("the embedded console has no index.html: run npm run build --workspace web")
	}
	return out, nil
})

// Handler serves the console from the root of its URL space: "/" is the
// page, and the script and style sheet sit next to it. Mount it under a
// prefix with http.StripPrefix.
//
// Every answer carries a strong ETag and Cache-Control: no-cache, so
// browsers keep the files but check them on each load (a 304 when the
// binary has not changed) and never run a console older than the gateway
// serving it. Text is sent gzip-compressed to clients that accept it. The
// page's Content-Security-Policy allows calls to its own origin only.
// Methods other than GET and HEAD get 405, unknown files 404.
func Handler() http.Handler {
	return http.HandlerFunc(serve)
}

func serve(w http.ResponseWriter, r *http.Request) {
	all, err := assets()
	if err != nil {
		http.Error(w, "the console is not built into this binary", http.StatusInternalServerError)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/")
	if name == "" {
		name = "index.html"
	}
	a, ok := all[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	for k, v := range securityHeaders {
		h.Set(k, v)
	}
	h.Set("Content-Type", a.contentType)
	h.Set("Cache-Control", "no-cache")
	body, etag := a.body, a.etag
	if a.gzipped != nil {
		h.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r) {
			body, etag = a.gzipped, strings.TrimSuffix(a.etag, `"`)+`-gzip"`
			h.Set("Content-Encoding", "gzip")
		}
	}
	h.Set("ETag", etag)
	// A zero time sends no Last-Modified: the ETag alone validates.
	http.ServeContent(w, r, a.name, time.Time{}, bytes.NewReader(body))
}

// acceptsGzip reports whether the request's Accept-Encoding allows gzip
// (RFC 9110, section 12.5.3): gzip (or x-gzip) listed with a weight above
// zero, or not listed and "*" listed with a weight above zero. Codings and
// parameter names are case-insensitive; a weight that does not parse
// counts as zero, so a garbled header gets the plain file.
func acceptsGzip(r *http.Request) bool {
	gzipQ, anyQ := -1.0, -1.0
	for _, v := range r.Header.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(v, ",") {
			coding, params, _ := strings.Cut(part, ";")
			switch coding = strings.TrimSpace(coding); {
			case strings.EqualFold(coding, "gzip"), strings.EqualFold(coding, "x-gzip"):
				gzipQ = max(gzipQ, weight(params))
			case coding == "*":
				anyQ = max(anyQ, weight(params))
			}
		}
	}
	if gzipQ >= 0 {
		return gzipQ > 0
	}
	return anyQ > 0
}

// weight is the q parameter among an Accept-Encoding entry's parameters:
// 1 when absent, 0 when it does not parse.
func weight(params string) float64 {
	for param := range strings.SplitSeq(params, ";") {
		name, value, _ := strings.Cut(param, "=")
		if !strings.EqualFold(strings.TrimSpace(name), "q") {
			continue
		}
		q, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil || !(q >= 0 && q <= 1) { // NaN too
			return 0
		}
		return q
	}
	return 1
}
