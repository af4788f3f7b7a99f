package main

import (
	"flag"
	"fmt"
	"strconv"

	"github.com/fluxkv/fluxkv/platform/rpcserver"
	"github.com/fluxkv/fluxkv/services/kvnode"
)

// limitFlags are the bounds a server puts on what each client may hold of
// it: on connections (node and gateway) and on requests (node).
type limitFlags struct {
	http rpcserver.Limits
	node kvnode.Limits
}

// register adds the connection limits of the API port.
func (l *limitFlags) register(fs *flag.FlagSet) {
	l.http = rpcserver.Limits{
		MaxConcurrentStreams: rpcserver.DefaultMaxConcurrentStreams,
		MaxHeaderBytes:       rpcserver.DefaultMaxHeaderBytes,
		ReadHeaderTimeout:    rpcserver.DefaultReadHeaderTimeout,
		IdleTimeout:          rpcserver.DefaultIdleTimeout,
	}
	fs.Var((*uint32Value)(&l.http.MaxConcurrentStreams), "max-concurrent-streams", "`calls` (HTTP/2 streams) one client connection may have in flight; more are refused until one ends")
	fs.IntVar(&l.http.MaxHeaderBytes, "max-header-bytes", l.http.MaxHeaderBytes, "largest request header block, in `bytes`")
	fs.DurationVar(&l.http.ReadHeaderTimeout, "read-header-timeout", l.http.ReadHeaderTimeout, "how long a client may take to send a request's headers (over HTTP/2, its connection preface); a slower one is disconnected")
	fs.DurationVar(&l.http.IdleTimeout, "idle-timeout", l.http.IdleTimeout, "close a client connection that has had no call in flight for this `duration`")
}

// registerNode adds the connection limits and the node's request limits.
func (l *limitFlags) registerNode(fs *flag.FlagSet) {
	l.register(fs)
	l.node = kvnode.Limits{
		MaxKeyBytes:         kvnode.DefaultMaxKeyBytes,
		MaxBatchOperations:  kvnode.DefaultMaxBatchOperations,
		MaxPipelineInFlight: kvnode.DefaultMaxPipelineInFlight,
	}
	fs.IntVar(&l.node.MaxKeyBytes, "max-key-bytes", l.node.MaxKeyBytes, fmt.Sprintf("longest key, in `bytes`, a request may name; at most %d, the API's bound", kvnode.DefaultMaxKeyBytes))
	fs.IntVar(&l.node.MaxBatchOperations, "max-batch-operations", l.node.MaxBatchOperations, fmt.Sprintf("most `operations` in one Batch; at most %d, the API's bound", kvnode.DefaultMaxBatchOperations))
	fs.IntVar(&l.node.MaxPipelineInFlight, "max-pipeline-in-flight", l.node.MaxPipelineInFlight, "`operations` of one Pipeline stream received and not yet answered; at this many the node reads no more of the stream until it has answered one")
	fs.Float64Var(&l.node.ClientRate, "client-rate-limit", 0, "calls per second per client (0: no limit); calls carrying --peer-token are not counted, and a clustered node needs one to use this")
	fs.IntVar(&l.node.ClientBurst, "client-rate-burst", 0, "calls above a client's rate allowed at once (0: the rate)")
	fs.StringVar(&l.node.ClientKeyHeader, "client-key-header", "Flux-Api-Key", "request `header` that identifies a client; without it, the client's IP address does")
}

// uint32Value is a flag.Value for a uint32 field.
type uint32Value uint32

func (v *uint32Value) String() string { return strconv.FormatUint(uint64(*v), 10) }

func (v *uint32Value) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("%q: want a whole number from 0 to %d", s, uint32(1<<32-1))
	}
	*v = uint32Value(n)
	return nil
}
