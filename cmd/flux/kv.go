package main

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	kvv1 "github.com/fluxkv/fluxkv/gen/flux/kv/v1"
)

// keyJSON is one key in --json output.
type keyJSON struct {
	Key string `json:"key"`
	valueJSON
	Revision   int64  `json:"revision"`
	TTL        string `json:"ttl,omitempty"`
	ExpireTime string `json:"expire_time,omitempty"`
}

func toKeyJSON(kv *kvv1.KeyValue, keysOnly bool) keyJSON {
	k := keyJSON{Key: kv.GetKey(), valueJSON: encodeValue(kv.GetValue(), keysOnly), Revision: kv.GetRevision()}
	if kv.GetTtl() != nil {
		k.TTL = kv.GetTtl().AsDuration().String()
		k.ExpireTime = kv.GetExpireTime().AsTime().Format(time.RFC3339Nano)
	}
	return k
}

func getCommand() *command {
	fs := newFlagSet("get")
	var cf clientFlags
	cf.register(fs)
	c := &command{name: "get", args: "KEY", summary: "Print the value of KEY. Exits 1 if it does not exist.", flags: fs}
	c.run = func(env *environment, args []string) int {
		if len(args) != 1 {
			return usageError(env, c.name, "want exactly one KEY, got %d arguments", len(args))
		}
		client, ctx, cancel, err := cf.kvClient(env.ctx)
		if err != nil {
			return fail(env, c.name, err)
		}
		defer cancel()
		resp, err := client.Get(ctx, connect.NewRequest(&kvv1.GetRequest{Key: args[0]}))
		if err != nil {
			return fail(env, c.name, err)
		}
		msg := resp.Msg
		if cf.json {
			out := struct {
				Found bool `json:"found"`
				keyJSON
			}{Found: msg.GetFound()}
			if msg.GetFound() {
				out.keyJSON = toKeyJSON(&kvv1.KeyValue{Key: args[0], Value: msg.GetValue(), Revision: msg.GetRevision(), Ttl: msg.GetTtl(), ExpireTime: msg.GetExpireTime()}, false)
			} else {
				out.Key = args[0]
			}
			printJSON(env, out)
		} else if msg.GetFound() {
			fmt.Fprintln(env.stdout, displayValue(msg.GetValue()))
		}
		if !msg.GetFound() {
			if !cf.json {
				fmt.Fprintf(env.stderr, "flux get: key %q not found\n", args[0])
			}
			return exitNotFound
		}
		return exitOK
	}
	return c
}

func putCommand() *command {
	fs := newFlagSet("put")
	var (
		cf                  clientFlags
		ttl                 time.Duration
		keepTTL             bool
		ifAbsent, ifPresent bool
		ifRevision          int64
		prev                bool
	)
	cf.register(fs)
	fs.DurationVar(&ttl, "ttl", 0, "expire the key after this `duration` (for example 30s, 5m, 2h)")
	fs.BoolVar(&keepTTL, "keep-ttl", false, "keep the expiry the key already has")
	fs.BoolVar(&ifAbsent, "if-absent", false, "write only if the key does not exist")
	fs.BoolVar(&ifPresent, "if-present", false, "write only if the key exists")
	fs.Int64Var(&ifRevision, "if-revision", 0, "write only if the key's revision is `N` (compare-and-swap)")
	fs.BoolVar(&prev, "prev", false, "also print the previous value")
	c := &command{
		name:    "put",
		args:    "KEY VALUE",
		summary: "Set KEY to VALUE (VALUE - reads standard input). Exits 1 if a condition does not hold.",
		flags:   fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) != 2 {
			return usageError(env, c.name, "want KEY and VALUE, got %d arguments", len(args))
		}
		conditions := 0
		for _, set := range []bool{ifAbsent, ifPresent, ifRevision != 0} {
			if set {
				conditions++
			}
		}
		if conditions > 1 {
			return usageError(env, c.name, "--if-absent, --if-present and --if-revision exclude each other")
		}
		value := []byte(args[1])
		if args[1] == "-" {
			var err error
			if value, err = io.ReadAll(env.stdin); err != nil {
				return usageError(env, c.name, "read value from standard input: %v", err)
			}
		}
		req := &kvv1.PutRequest{Key: args[0], Value: value, KeepTtl: keepTTL, ReturnPrevious: prev}
		if ttl != 0 {
			req.Ttl = durationpb.New(ttl)
		}
		switch {
		case ifAbsent:
			req.Condition = &kvv1.PutRequest_IfAbsent{IfAbsent: true}
		case ifPresent:
			req.Condition = &kvv1.PutRequest_IfPresent{IfPresent: true}
		case ifRevision != 0:
			req.Condition = &kvv1.PutRequest_IfRevision{IfRevision: ifRevision}
		}
		client, ctx, cancel, err := cf.kvClient(env.ctx)
		if err != nil {
			return fail(env, c.name, err)
		}
		defer cancel()
		resp, err := client.Put(ctx, connect.NewRequest(req))
		if err != nil {
			return fail(env, c.name, err)
		}
		if cf.json {
			out := struct {
				Key      string   `json:"key"`
				Revision int64    `json:"revision"`
				Previous *keyJSON `json:"previous,omitempty"`
			}{Key: args[0], Revision: resp.Msg.GetRevision()}
			if p := resp.Msg.GetPrevious(); p != nil {
				k := toKeyJSON(p, false)
				out.Previous = &k
			}
			printJSON(env, out)
			return exitOK
		}
		fmt.Fprintf(env.stdout, "OK revision %d\n", resp.Msg.GetRevision())
		if p := resp.Msg.GetPrevious(); p != nil {
			fmt.Fprintf(env.stdout, "previous (revision %d): %s\n", p.GetRevision(), displayValue(p.GetValue()))
		}
		return exitOK
	}
	return c
}

func delCommand() *command {
	fs := newFlagSet("del")
	var (
		cf         clientFlags
		ifRevision int64
	)
	cf.register(fs)
	fs.Int64Var(&ifRevision, "if-revision", 0, "delete only if the key's revision is `N`")
	c := &command{name: "del", args: "KEY", summary: "Delete KEY. Exits 1 if it does not exist.", flags: fs}
	c.run = func(env *environment, args []string) int {
		if len(args) != 1 {
			return usageError(env, c.name, "want exactly one KEY, got %d arguments", len(args))
		}
		req := &kvv1.DeleteRequest{Key: args[0]}
		if ifRevision != 0 {
			req.Condition = &kvv1.DeleteRequest_IfRevision{IfRevision: ifRevision}
		}
		client, ctx, cancel, err := cf.kvClient(env.ctx)
		if err != nil {
			return fail(env, c.name, err)
		}
		defer cancel()
		resp, err := client.Delete(ctx, connect.NewRequest(req))
		if err != nil {
			return fail(env, c.name, err)
		}
		if cf.json {
			printJSON(env, struct {
				Key      string `json:"key"`
				Found    bool   `json:"found"`
				Revision int64  `json:"revision"`
			}{args[0], resp.Msg.GetFound(), resp.Msg.GetRevision()})
		} else if resp.Msg.GetFound() {
			fmt.Fprintf(env.stdout, "deleted revision %d\n", resp.Msg.GetRevision())
		}
		if !resp.Msg.GetFound() {
			if !cf.json {
				fmt.Fprintf(env.stderr, "flux del: key %q not found\n", args[0])
			}
			return exitNotFound
		}
		return exitOK
	}
	return c
}

func scanCommand() *command {
	fs := newFlagSet("scan")
	var (
		cf       clientFlags
		limit    = 100
		cursor   string
		keysOnly bool
	)
	cf.register(fs)
	fs.IntVar(&limit, "limit", limit, "print at most `N` keys (0: all of them)")
	fs.StringVar(&cursor, "cursor", "", "continue a previous scan from its next_cursor")
	fs.BoolVar(&keysOnly, "keys-only", false, "print keys without values")
	c := &command{
		name:    "scan",
		args:    "[PREFIX]",
		summary: "List keys that start with PREFIX (all keys without it) in key order, one per line: key, tab, value.",
		flags:   fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) > 1 {
			return usageError(env, c.name, "want at most one PREFIX, got %d arguments", len(args))
		}
		if limit < 0 {
			return usageError(env, c.name, "--limit %d: must not be negative", limit)
		}
		var prefix string
		if len(args) == 1 {
			prefix = args[0]
		}
		client, ctx, cancel, err := cf.kvClient(env.ctx)
		if err != nil {
			return fail(env, c.name, err)
		}
		defer cancel()
		var items []keyJSON
		for {
			page := uint32(1000)
			if limit > 0 {
				page = uint32(min(limit-len(items), 1000))
			}
			resp, err := client.Scan(ctx, connect.NewRequest(&kvv1.ScanRequest{Prefix: prefix, Limit: page, Cursor: cursor, KeysOnly: keysOnly}))
			if err != nil {
				return fail(env, c.name, err)
			}
			for _, kv := range resp.Msg.GetItems() {
				if cf.json {
					items = append(items, toKeyJSON(kv, keysOnly))
					continue
				}
				items = append(items, keyJSON{})
				if keysOnly {
					fmt.Fprintln(env.stdout, kv.GetKey())
				} else {
					fmt.Fprintf(env.stdout, "%s\t%s\n", kv.GetKey(), displayValue(kv.GetValue()))
				}
			}
			cursor = resp.Msg.GetNextCursor()
			if cursor == "" || (limit > 0 && len(items) >= limit) {
				break
			}
		}
		if cf.json {
			if items == nil {
				items = []keyJSON{}
			}
			printJSON(env, struct {
				Items      []keyJSON `json:"items"`
				NextCursor string    `json:"next_cursor,omitempty"`
			}{items, cursor})
		} else if cursor != "" {
			fmt.Fprintf(env.stderr, "more keys follow: continue with --cursor %s\n", strconv.Quote(cursor))
		}
		return exitOK
	}
	return c
}
