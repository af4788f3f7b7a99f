package kvnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fluxkv/fluxkv/platform/admin"
	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/changelog"
	"github.com/fluxkv/fluxkv/platform/store"
)

// durability is what the handler needs from the append-only file: room in
// its buffer before a write, and the policy's promise after it.
type durability interface {
	Reserve(ctx context.Context) error
	Wait(ctx context.Context, rev int64) error
	// Done reports whether Wait(rev) would return at once.
	Done(rev int64) bool
}

// inMemory is the durability of a node without a log: nothing to wait for.
type inMemory struct{}

func (inMemory) Reserve(context.Context) error     { return nil }
func (inMemory) Wait(context.Context, int64) error { return nil }
func (inMemory) Done(int64) bool                   { return true }

func (n *Node) durability() durability {
	if n.log == nil {
		return inMemory{}
	}
	return n.log
}

// openStore creates the store and, unless the node runs in memory, opens
// the append-only file and replays it into the store.
func (n *Node) openStore(registry prometheus.Registerer) error {
	if !n.cfg.AppendOnly {
		n.tail = changelog.NewTail(n.cfg.NodeID, 0, 0, 0)
		n.tail.SetStamp(n.router.stamp)
		n.events = n.tail
		n.store = store.New(store.WithClock(n.cfg.Clock), store.WithChangeHook(n.tail.Append))
		n.cfg.Logger.Warn("append-only file is off: data lives in memory only")
		return nil
	}
	var st *store.Store
	log, err := changelog.Open(filepath.Join(n.cfg.DataDir, "aof"), n.cfg.NodeID,
		changelog.WithPolicy(n.cfg.AppendFsync),
		changelog.WithLogger(n.cfg.Logger),
		changelog.WithRegisterer(registry),
		changelog.WithRewriteThreshold(n.cfg.RewriteMinBytes, max(n.cfg.RewriteGrowthPercent, 0)),
		changelog.WithSnapshot(func(fn func(store.Entry) bool) { st.Range(fn) }),
		changelog.WithRetention(n.relayDone),
	)
	if err != nil {
		return fmt.Errorf("open append-only file: %w", err)
	}
	log.SetStamp(n.router.stamp)
	n.log = log
	n.events = log
	st = store.New(store.WithClock(n.cfg.Clock), store.WithChangeHook(log.Append))
	n.store = st
	stats, err := log.Replay(st)
	if err != nil {
		return fmt.Errorf("recover from append-only file: %w", err)
	}
	n.cfg.Logger.Info("recovered from append-only file",
		slog.String("dir", log.Dir()),
		slog.Int64("records", stats.Records),
		slog.Int64("revision", stats.Revision),
		slog.Int("keys", st.Len()),
		slog.Int64("torn_bytes_dropped", stats.DroppedBytes),
		slog.Duration("took", stats.Duration),
		slog.String("appendfsync", n.cfg.AppendFsync.String()),
	)
	return nil
}

// adminHandler adds POST /aof/rewrite to the standard admin endpoints.
func (n *Node) adminHandler(registry prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", admin.NewHandler(registry, n.healthy))
	mux.HandleFunc("POST /aof/rewrite", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if n.log == nil {
			http.Error(w, "the append-only file is off on this node", http.StatusConflict)
			return
		}
		err := n.log.Rewrite(r.Context())
		switch {
		case err == nil:
			_, _ = w.Write([]byte("rewritten\n"))
		default:
			http.Error(w, "rewrite failed: "+err.Error(), http.StatusInternalServerError)
		}
	})
	return auth.AdminHandler(n.cfg.Auth, mux)
}

// refusedError maps a Reserve failure: nothing was written, so the client
// may simply retry.
func refusedError(err error) *connect.Error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("write refused: the deadline passed while the disk caught up"))
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("write refused: the call was canceled"))
	case errors.Is(err, changelog.ErrStalled):
		return connect.NewError(connect.CodeUnavailable, errors.New("write refused: the disk is not keeping up"))
	case errors.Is(err, changelog.ErrClosed):
		return connect.NewError(connect.CodeUnavailable, errors.New("write refused: the node is shutting down"))
	default:
		return connect.NewError(connect.CodeUnavailable, errors.New("write refused: the append-only file is failing"))
	}
}

// unconfirmedError maps a Wait failure. The write is already in memory (and
// may yet reach the disk), so its outcome is unknown: a client must read the
// key before retrying a conditional write.
func unconfirmedError(err error) *connect.Error {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("outcome unknown: the deadline passed before the write was durable"))
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("outcome unknown: the call was canceled before the write was durable"))
	case errors.Is(err, changelog.ErrStalled):
		return connect.NewError(connect.CodeUnknown, errors.New("outcome unknown: the write was applied but the disk did not confirm it in time"))
	default:
		return connect.NewError(connect.CodeUnknown, errors.New("outcome unknown: the write was applied but the append-only file failed"))
	}
}
