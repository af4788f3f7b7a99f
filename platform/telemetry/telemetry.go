// Package telemetry holds the instrumentation shared by Flux-KV's servers and
// the gateway: Prometheus metrics for every RPC (RPCMetrics), OpenTelemetry
// tracing with W3C propagation (Tracing) and an asynchronous access log
// (AccessLog), each installed as a Connect interceptor and, for the access
// log, an HTTP middleware.
//
// On a handler, interceptors go in this order, so that the later ones see the
// span and the access log records the code the metrics record:
//
//	connect.WithInterceptors(tracing.Interceptor(), accessLog.Interceptor(), rpcMetrics, ...)
package telemetry

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
)

// codeOK is the code label of a call that succeeded; Connect has no name for it.
const codeOK = "ok"

// codeOf returns the status code err puts on the wire, in Connect's
// snake_case spelling: errors other than *connect.Error are sent as Unknown,
// except the context's, which Connect sends as Canceled or DeadlineExceeded.
func codeOf(err error) string {
	if err == nil {
		return codeOK
	}
	var connectErr *connect.Error
	switch {
	case errors.As(err, &connectErr):
		return connectErr.Code().String()
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled.String()
	case errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded.String()
	default:
		return connect.CodeUnknown.String()
	}
}

// splitProcedure splits "/pkg.Service/Method" into its service and method.
func splitProcedure(procedure string) (service, method string) {
	service, method, ok := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	if !ok {
		return "", procedure
	}
	return service, method
}

// protocolOf names the RPC protocol of a request by its headers, for requests
// that no Connect handler saw; "http" when it is none of them.
func protocolOf(r *http.Request) string {
	contentType := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(contentType, "application/grpc-web"):
		return connect.ProtocolGRPCWeb
	case strings.HasPrefix(contentType, "application/grpc"):
		return connect.ProtocolGRPC
	case strings.HasPrefix(contentType, "application/connect+"), r.Header.Get("Connect-Protocol-Version") != "":
		return connect.ProtocolConnect
	default:
		return "http"
	}
}

// codeOfResponse reads the status code of a response that no Connect handler
// wrote. gRPC and gRPC-Web carry it in Grpc-Status (a header for
// trailers-only responses, else a trailer); otherwise the HTTP status stands
// for the code Connect would have sent it with.
func codeOfResponse(header http.Header, status int) string {
	grpcStatus := header.Get("Grpc-Status")
	if values := header[http.TrailerPrefix+"Grpc-Status"]; grpcStatus == "" && len(values) > 0 {
		grpcStatus = values[0]
	}
	if grpcStatus != "" {
		n, err := strconv.Atoi(grpcStatus)
		switch {
		case err != nil || n < 0:
			return connect.CodeUnknown.String()
		case n == 0:
			return codeOK
		default:
			return connect.Code(n).String()
		}
	}
	switch {
	case status >= 200 && status < 300:
		return codeOK
	case status == http.StatusBadRequest:
		return connect.CodeInvalidArgument.String()
	case status == http.StatusUnauthorized:
		return connect.CodeUnauthenticated.String()
	case status == http.StatusForbidden:
		return connect.CodePermissionDenied.String()
	case status == http.StatusNotFound, status == http.StatusMethodNotAllowed, status == http.StatusNotImplemented,
		status == http.StatusUnsupportedMediaType:
		// An unknown route or a request the RPC handler cannot take: what a
		// client of any of the protocols reports as Unimplemented.
		return connect.CodeUnimplemented.String()
	case status == http.StatusRequestEntityTooLarge, status == http.StatusTooManyRequests:
		return connect.CodeResourceExhausted.String()
	case status == http.StatusServiceUnavailable, status == http.StatusBadGateway:
		return connect.CodeUnavailable.String()
	case status == http.StatusGatewayTimeout:
		return connect.CodeDeadlineExceeded.String()
	case status == http.StatusInternalServerError:
		return connect.CodeInternal.String()
	default:
		return connect.CodeUnknown.String()
	}
}
