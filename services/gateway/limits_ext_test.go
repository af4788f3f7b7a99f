package gateway_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"

	clusterv1 "github.com/fluxkv/fluxkv/gen/flux/cluster/v1"
	"github.com/fluxkv/fluxkv/gen/flux/cluster/v1/clusterv1connect"
	"github.com/fluxkv/fluxkv/services/gateway"
)

// withUnknownField returns the encoding of a message that is a field the
// schema does not know (number 1000), of size bytes: valid protobuf for any
// message, and as large as wanted.
func withUnknownField(size int) []byte {
	b := protowire.AppendTag(nil, 1000, protowire.BytesType)
	return protowire.AppendBytes(b, make([]byte, size))
}

// connectUnaryCode posts body to procedure as a Connect unary call in
// binary and returns the error code the gateway answers with ("" for
// success).
func connectUnaryCode(t *testing.T, client *http.Client, url string, body io.Reader) string {
	t.Helper()
	req, err := http.NewRequestWithContext(callCtx(t), http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/proto")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	var e struct {
		Code string `json:"code"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		return resp.Status
	}
	return e.Code
}

// TestOwnServicesLimitRequests: the services the gateway answers itself
// (ClusterService, health, reflection) refuse a message over
// MaxMessageBytes with resource_exhausted, like the proxied methods, and
// stop reading a body once it is over the limit.
func TestOwnServicesLimitRequests(t *testing.T) {
	t.Parallel()
	endpoint := startEtcd(t)
	startNodes(t, endpoint, 1, nil)
	const limit = 1024
	gw := startGateway(t, gateway.Config{Etcd: []string{endpoint}, MaxMessageBytes: limit})

	for _, p := range protocols {
		t.Run("ClusterService.Status/"+p.name, func(t *testing.T) {
			client := clusterv1connect.NewClusterServiceClient(h2cClient(t), gw.APIURL(), p.opts...)
			fits := &clusterv1.StatusRequest{}
			fits.ProtoReflect().SetUnknown(withUnknownField(limit / 2))
			if _, err := client.Status(callCtx(t), connect.NewRequest(fits)); err != nil {
				t.Fatalf("a request under the limit: %v", err)
			}
			big := &clusterv1.StatusRequest{}
			big.ProtoReflect().SetUnknown(withUnknownField(1 << 20))
			_, err := client.Status(callCtx(t), connect.NewRequest(big))
			if got := codeOf(err); got != connect.CodeResourceExhausted {
				t.Errorf("a request of 1 MiB: got %v (%v), want resource_exhausted", got, err)
			}
		})
	}

	t.Run("health", func(t *testing.T) {
		url := gw.APIURL() + "/grpc.health.v1.Health/Check"
		if got := connectUnaryCode(t, h2cClient(t), url, bytes.NewReader(withUnknownField(limit/2))); got != "" {
			t.Fatalf("a check under the limit: got %s", got)
		}
		if got := connectUnaryCode(t, h2cClient(t), url, bytes.NewReader(withUnknownField(1<<20))); got != "resource_exhausted" {
			t.Errorf("a check of 1 MiB: got %q, want resource_exhausted", got)
		}
	})

	t.Run("reflection", func(t *testing.T) {
		// A bidi stream: the one oversized message ends it.
		msg := withUnknownField(1 << 20)
		body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
		req, err := http.NewRequestWithContext(callCtx(t), http.MethodPost,
			gw.APIURL()+"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", bytes.NewReader(append(body, msg...)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/connect+proto")
		resp, err := h2cClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		// The last envelope ends the stream, with the error in JSON.
		var end struct {
			Error struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		for len(out) >= 5 {
			n := binary.BigEndian.Uint32(out[1:5])
			if uint32(len(out)-5) < n {
				break
			}
			if out[0]&2 != 0 {
				_ = json.Unmarshal(out[5:5+n], &end)
			}
			out = out[5+n:]
		}
		if end.Error.Code != "resource_exhausted" {
			t.Errorf("a reflection request of 1 MiB: got end of stream %+v, want resource_exhausted", end)
		}
	})

	t.Run("body not read", func(t *testing.T) {
		// 64 MiB, sent as it is read: the gateway refuses it after the
		// first bytes past the limit, and the client stops sending.
		const size = 64 << 20
		header := protowire.AppendVarint(protowire.AppendTag(nil, 1000, protowire.BytesType), size)
		body := &countingReader{r: io.MultiReader(bytes.NewReader(header), zeros{}), left: int64(len(header)) + size}
		client := h2cClient(t)
		if got := connectUnaryCode(t, client, gw.APIURL()+clusterv1connect.ClusterServiceStatusProcedure, body); got != "resource_exhausted" {
			t.Errorf("a request of 64 MiB: got %q, want resource_exhausted", got)
		}
		client.CloseIdleConnections()
		if read := body.read.Load(); read > size/4 {
			t.Errorf("the gateway read %d bytes of a %d-byte request it refuses", read, size)
		}
	})
}

// countingReader reads at most left bytes from r and counts them.
type countingReader struct {
	r    io.Reader
	left int64
	read atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	c.read.Add(int64(n))
	return n, err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
