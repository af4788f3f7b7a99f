package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	"github.com/fluxkv/fluxkv/client"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
	"github.com/fluxkv/fluxkv/platform/auth"
)

// defaultEndpoint is the gateway's default address; a node's works too.
const defaultEndpoint = "http://127.0.0.1:7700"

// clientFlags are the flags every client command takes.
type clientFlags struct {
	etcd     stringList
	endpoint string
	protocol string
	timeout  time.Duration
	json     bool
	token    string
	tls      clientTLSFlags
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	f.registerEndpoint(fs)
	fs.Var(&f.etcd, "etcd", "comma-separated etcd `endpoints`: route each key to its owner with the Go SDK instead of using --endpoint")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "deadline for the call")
	f.tls.registerEtcd(fs)
}

// registerEndpoint registers the flags of commands that talk to one
// endpoint for as long as they run (streams): no SDK routing, no deadline.
func (f *clientFlags) registerEndpoint(fs *flag.FlagSet) {
	fs.StringVar(&f.endpoint, "endpoint", defaultEndpoint, "`URL` of a Flux-KV gateway or node")
	fs.StringVar(&f.protocol, "protocol", "connect", "wire `protocol`: connect, grpc or grpcweb")
	fs.BoolVar(&f.json, "json", false, "print the result as JSON, for scripts")
	fs.StringVar(&f.token, "token", "", "bearer `token` to send (Authorization: Bearer), for servers started with --auth-file; prefer FLUX_TOKEN, which stays out of the process list")
	f.tls.registerAPI(fs)
}

// clientOptions returns the connect options for the chosen protocol.
func (f *clientFlags) clientOptions() ([]connect.ClientOption, error) {
	opts := []connect.ClientOption{connect.WithInterceptors(auth.Bearer(f.token))}
	switch f.protocol {
	case "connect":
		return opts, nil
	case "grpc":
		return append(opts, connect.WithGRPC()), nil
	case "grpcweb":
		return append(opts, connect.WithGRPCWeb()), nil
	default:
		return nil, fmt.Errorf("%w: --protocol %q: use connect, grpc or grpcweb", errUsage, f.protocol)
	}
}

func (f *clientFlags) baseURL() (string, error) {
	u, err := url.Parse(f.endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%w: --endpoint %q: want a URL such as http://127.0.0.1:7700", errUsage, f.endpoint)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// kvAPI is what the key commands call: a KVService client for --endpoint,
// or the SDK for --etcd.
type kvAPI interface {
	Get(context.Context, *connect.Request[kvv1.GetRequest]) (*connect.Response[kvv1.GetResponse], error)
	Put(context.Context, *connect.Request[kvv1.PutRequest]) (*connect.Response[kvv1.PutResponse], error)
	Delete(context.Context, *connect.Request[kvv1.DeleteRequest]) (*connect.Response[kvv1.DeleteResponse], error)
	Scan(context.Context, *connect.Request[kvv1.ScanRequest]) (*connect.Response[kvv1.ScanResponse], error)
}

// kvClient builds the client and the call context from the flags. The
// returned cancel also closes the client.
func (f *clientFlags) kvClient(ctx context.Context) (kvAPI, context.Context, context.CancelFunc, error) {
	opts, err := f.clientOptions()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	if len(f.etcd) > 0 {
		sdkOpts, err := f.sdkOptions(opts)
		if err != nil {
			cancel()
			return nil, nil, nil, err
		}
		c, err := client.New(ctx, append(sdkOpts, client.WithEtcd(f.etcd...))...)
		if err != nil {
			cancel()
			return nil, nil, nil, connect.NewError(connect.CodeUnavailable, err)
		}
		return sdkAPI{c}, ctx, func() { cancel(); _ = c.Close() }, nil
	}
	base, err := f.baseURL()
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	httpc, err := f.tls.httpClient()
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return kvv1connect.NewKVServiceClient(httpc, base, opts...), ctx, cancel, nil
}

// sdkOptions are the Go SDK's options for the flags, with opts for its
// connect clients.
func (f *clientFlags) sdkOptions(opts []connect.ClientOption) ([]client.Option, error) {
	apiTLS, err := f.tls.apiTLS()
	if err != nil {
		return nil, err
	}
	etcdTLS, err := f.tls.etcdTLS()
	if err != nil {
		return nil, err
	}
	// With TLS flags, nodes must serve TLS; without, they may or not.
	return []client.Option{client.WithClientOptions(opts...), client.WithTLS(apiTLS), client.WithEtcdTLS(etcdTLS)}, nil
}

// sdkAPI adapts the SDK to kvAPI.
type sdkAPI struct{ c *client.Client }

func (a sdkAPI) Get(ctx context.Context, req *connect.Request[kvv1.GetRequest]) (*connect.Response[kvv1.GetResponse], error) {
	return respond(a.c.Get(ctx, req.Msg.GetKey()))
}

func (a sdkAPI) Put(ctx context.Context, req *connect.Request[kvv1.PutRequest]) (*connect.Response[kvv1.PutResponse], error) {
	return respond(a.c.Put(ctx, req.Msg))
}

func (a sdkAPI) Delete(ctx context.Context, req *connect.Request[kvv1.DeleteRequest]) (*connect.Response[kvv1.DeleteResponse], error) {
	return respond(a.c.Delete(ctx, req.Msg))
}

func (a sdkAPI) Scan(ctx context.Context, req *connect.Request[kvv1.ScanRequest]) (*connect.Response[kvv1.ScanResponse], error) {
	return respond(a.c.Scan(ctx, req.Msg))
}

func respond[T any](msg *T, err error) (*connect.Response[T], error) {
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(msg), nil
}

// fail prints a one-line error for a failed call and returns its exit code.
func fail(env *environment, cmd string, err error) int {
	if errors.Is(err, errUsage) {
		return usageError(env, cmd, "%s", strings.TrimPrefix(err.Error(), errUsage.Error()+": "))
	}
	code := connect.CodeOf(err)
	msg := err.Error()
	var connectErr *connect.Error
	if errors.As(err, &connectErr) {
		msg = code.String() + ": " + oneLine(connectErr.Message())
	}
	fmt.Fprintf(env.stderr, "flux %s: %s\n", cmd, msg)
	if code == connect.CodeFailedPrecondition {
		return exitNotFound
	}
	return exitError
}

// oneLine folds a multi-line message (validation errors list one violation a
// line) into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// valueJSON is how values appear in --json output: as text when they are
// valid UTF-8, else in base64 under another name, so scripts can tell.
type valueJSON struct {
	Value       *string `json:"value,omitempty"`
	ValueBase64 *string `json:"value_base64,omitempty"`
}

func encodeValue(v []byte, keysOnly bool) valueJSON {
	if keysOnly {
		return valueJSON{}
	}
	if utf8.Valid(v) {
		s := string(v)
		return valueJSON{Value: &s}
	}
	s := base64.StdEncoding.EncodeToString(v)
	return valueJSON{ValueBase64: &s}
}

// displayValue renders a value for people: text when it is valid UTF-8,
// otherwise base64 with a marker.
func displayValue(v []byte) string {
	if utf8.Valid(v) {
		return string(v)
	}
	return "base64:" + base64.StdEncoding.EncodeToString(v)
}

func printJSON(env *environment, v any) {
	enc := json.NewEncoder(env.stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
