package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/fluxkv/fluxkv/platform/auth"
)

// authFlags are the token flags of the servers (node, gateway).
type authFlags struct {
	file      string
	peerToken string
	insecure  bool
}

func (a *authFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.file, "auth-file", "", "token `file` (lines of \"scope sha256:<hex> [name]\"; see flux token) every call must present a token of, Authorization: Bearer; reloaded on SIGHUP. Empty: no authentication")
	fs.BoolVar(&a.insecure, "insecure", false, "acknowledge listening in plaintext on addresses other hosts can reach (without it, a loud warning is logged for each such listener)")
	fs.StringVar(&a.peerToken, "peer-token", "", "bearer `token` this server sends on its calls to nodes (forwarded requests, moving keys, statistics); needs the admin scope where the nodes check tokens")
}

// open reads the token file, if any, and reloads it on SIGHUP until ctx
// ends: a file that no longer parses is logged and the tokens read before
// stay.
func (a *authFlags) open(ctx context.Context, logger *slog.Logger) (*auth.File, error) {
	if a.file == "" {
		return nil, nil
	}
	f, err := auth.Open(a.file)
	if err != nil {
		return nil, err
	}
	logger.Info("bearer tokens required", slog.String("auth_file", a.file), slog.Int("tokens", f.Tokens().Len()))
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			if err := f.Reload(); err != nil {
				logger.Error("token file not reloaded; the tokens read before stay", slog.Any("error", err))
				continue
			}
			logger.Info("token file reloaded", slog.Int("tokens", f.Tokens().Len()))
		}
	}()
	return f, nil
}

func tokenCommand() *command {
	fs := newFlagSet("token")
	var (
		scope = "read"
		name  string
	)
	fs.StringVar(&scope, "scope", scope, "`scope` of the token: read, write or admin")
	fs.StringVar(&name, "name", "", "`name` the token goes by in errors and logs (default: the start of its hash)")
	c := &command{
		name: "token",
		args: "new",
		summary: "Make a new random bearer token: prints the token (give it to the client) and, on standard error, " +
			"the line to add to the servers' --auth-file, which holds only its hash.",
		flags: fs,
	}
	c.run = func(env *environment, args []string) int {
		if len(args) != 1 || args[0] != "new" {
			return usageError(env, c.name, "want: flux token new --scope read|write|admin [--name NAME]")
		}
		s, err := auth.ParseScope(scope)
		if err != nil {
			return usageError(env, c.name, "--scope: %v", err)
		}
		tok, err := auth.NewToken()
		if err != nil {
			fmt.Fprintf(env.stderr, "flux token: %v\n", err)
			return exitError
		}
		line := fmt.Sprintf("%s %s", s, auth.Hash(tok))
		if name != "" {
			line += " " + name
		}
		fmt.Fprintln(env.stdout, tok)
		fmt.Fprintf(env.stderr, "add to the --auth-file of every node and gateway, then send them SIGHUP:\n%s\n", line)
		return exitOK
	}
	return c
}
