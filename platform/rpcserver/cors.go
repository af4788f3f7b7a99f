package rpcserver

import (
	"net/http"
	"time"

	connectcors "connectrpc.com/cors"
	"github.com/rs/cors"
)

// CORS lets browsers on the given origins call the handler with the Connect
// and gRPC-Web protocols, with a bearer token in the Authorization header.
// "*" allows every origin. Credentials (cookies) are never allowed, so "*"
// exposes none; a token travels only when the page sends it itself.
func CORS(h http.Handler, allowedOrigins []string) http.Handler {
	c := cors.New(cors.Options{
		AllowedOrigins: allowedOrigins,
		AllowedMethods: connectcors.AllowedMethods(),
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization"),
		ExposedHeaders: connectcors.ExposedHeaders(),
		// Browsers cap this anyway; two hours saves a preflight per request.
		MaxAge: int((2 * time.Hour).Seconds()),
	})
	return c.Handler(h)
}
