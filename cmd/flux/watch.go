package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
	"github.com/fluxkv/fluxkv/gen/flux/kv/v1/kvv1connect"
)

func watchCommand() *command {
	fs := newFlagSet("watch")
	var (
		cf       clientFlags
		key      string
		from     string
		startRev int64
	)
	cf.registerEndpoint(fs)
	fs.StringVar(&key, "key", "", "watch this one `KEY` instead of a prefix")
	fs.StringVar(&from, "from", "", "resume where an earlier watch stopped: the resume `TOKEN` it printed")
	fs.Int64Var(&startRev, "start-revision", 0, "start at revision `N` of the node that serves the watch (a standalone node, or the owner of --key)")
	c := &command{
		name: "watch",
		args: "[PREFIX]",
		summary: "Print each change to keys under PREFIX (all keys without it), or to --key, as it happens, one per line: " +
			"op, key, revision, node and value. Runs until interrupted, then prints the token that resumes it (--from).",
		flags: fs,
	}
	c.run = func(env *environment, args []string) int {
		switch {
		case len(args) > 1:
			return usageError(env, c.name, "want at most one PREFIX, got %d arguments", len(args))
		case len(args) == 1 && key != "":
			return usageError(env, c.name, "PREFIX and --key exclude each other")
		case from != "" && startRev != 0:
			return usageError(env, c.name, "--from and --start-revision exclude each other")
		case startRev < 0:
			return usageError(env, c.name, "--start-revision %d: must not be negative", startRev)
		}
		req := &kvv1.WatchRequest{StartRevision: startRev, ResumeToken: from}
		if key != "" {
			req.Target = &kvv1.WatchRequest_Key{Key: key}
		} else {
			var prefix string
			if len(args) == 1 {
				prefix = args[0]
			}
			req.Target = &kvv1.WatchRequest_Prefix{Prefix: prefix}
		}
		opts, err := cf.clientOptions()
		if err != nil {
			return fail(env, c.name, err)
		}
		base, err := cf.baseURL()
		if err != nil {
			return fail(env, c.name, err)
		}
		httpc, err := cf.tls.httpClient()
		if err != nil {
			return fail(env, c.name, err)
		}
		client := kvv1connect.NewKVServiceClient(httpc, base, opts...)
		stream, err := client.Watch(env.ctx, connect.NewRequest(req))
		if err != nil {
			return fail(env, c.name, err)
		}
		token := from
		for stream.Receive() {
			for _, ev := range stream.Msg().GetEvents() {
				if err := printEvent(env, ev, cf.json); err != nil {
					_ = stream.Close()
					return fail(env, c.name, err)
				}
			}
			token = stream.Msg().GetResumeToken()
		}
		err = stream.Err()
		_ = stream.Close()
		if err == nil {
			// The server never ends a watch on its own accord.
			err = errors.New("the server ended the watch")
		}
		if env.ctx.Err() != nil {
			// Interrupted: the normal way to stop watching.
			printResume(env, token)
			return exitOK
		}
		code := fail(env, c.name, err)
		printResume(env, token)
		return code
	}
	return c
}

// printResume tells the user how to continue from the last response
// received, on standard error so standard output stays one event a line.
func printResume(env *environment, token string) {
	if token != "" {
		fmt.Fprintf(env.stderr, "flux watch: to resume after the last change shown, pass --from %s\n", token)
	}
}

// printEvent prints one change: protojson with --json, otherwise
// "<op> <key> rev=<n> node=<id>", and " value=<value>" for a put.
func printEvent(env *environment, ev *cdcv1.ChangeEvent, asJSON bool) error {
	if asJSON {
		b, err := protojson.MarshalOptions{Multiline: false}.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode event as JSON: %w", err)
		}
		fmt.Fprintf(env.stdout, "%s\n", b)
		return nil
	}
	op := strings.ToLower(strings.TrimPrefix(ev.GetOp().String(), "OP_"))
	line := fmt.Sprintf("%s %s rev=%d node=%s", op, quoteIfNeeded(ev.GetKey()), ev.GetRevision(), ev.GetNodeId())
	if ev.GetOp() == cdcv1.Op_OP_PUT {
		line += " value=" + quoteIfNeeded(displayValue(ev.GetValue()))
	}
	fmt.Fprintln(env.stdout, line)
	return nil
}

// quoteIfNeeded keeps a line per event and fields split by spaces: text
// with spaces, quotes or control characters is printed Go-quoted.
func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || r == '"' || !unicode.IsPrint(r) }) {
		return strconv.Quote(s)
	}
	return s
}
