package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/fluxkv/fluxkv/platform/auth"
	"github.com/fluxkv/fluxkv/platform/tlsfiles"
)

// securityFlags are the flags of the servers (node, gateway) that decide
// who may call them and how: bearer tokens, TLS, and the acknowledgement
// of plaintext listeners.
type securityFlags struct {
	authFile       string
	authReflection bool
	peerToken      string
	insecure       bool
	tls            tlsfiles.Files // the server's own: --tls-cert, --tls-key, --tls-client-ca
	peerTLS        tlsfiles.Files // for calls to nodes
	etcdTLS        tlsfiles.Files
	amqpTLS        tlsfiles.Files // nodes only
}

// security is what securityFlags load.
type security struct {
	auth                           *auth.File // nil: no authentication
	authReflection                 bool
	peerToken                      string
	insecure                       bool
	tls, peerTLS, etcdTLS, amqpTLS *tls.Config // nil: plaintext, or the system's roots for clients
}

func (s *securityFlags) register(fs *flag.FlagSet, amqp bool) {
	fs.StringVar(&s.authFile, "auth-file", "", "token `file` (lines of \"scope sha256:<hex> [name]\"; see flux token) every call must present a token of, Authorization: Bearer; the admin port then needs an admin token too (but /healthz); reloaded on SIGHUP. Empty: no authentication")
	fs.BoolVar(&s.authReflection, "auth-reflection", false, "with --auth-file, make gRPC server reflection need a token (read) too; by default it stays open, like health checks")
	fs.BoolVar(&s.insecure, "insecure", false, "acknowledge listening in plaintext on addresses other hosts can reach (without it, a loud warning is logged for each such listener)")
	fs.StringVar(&s.peerToken, "peer-token", "", "bearer `token` this server sends on its calls to nodes (forwarded requests, moving keys, statistics); needs the admin scope where the nodes check tokens")
	fs.StringVar(&s.tls.Cert, "tls-cert", "", "certificate chain `file` (PEM) both ports serve TLS with, h2 and http/1.1 by ALPN; with --tls-key; reloaded on SIGHUP. Empty: plaintext (h2c)")
	fs.StringVar(&s.tls.Key, "tls-key", "", "private key `file` (PEM) of --tls-cert")
	fs.StringVar(&s.tls.CA, "tls-client-ca", "", "CA bundle `file` (PEM): clients of both ports must present a certificate it signs (mutual TLS); reloaded on SIGHUP")
	fs.StringVar(&s.peerTLS.CA, "peer-tls-ca", "", "CA bundle `file` (PEM) to verify nodes that serve TLS with, on this server's calls to them (default: the system's roots)")
	fs.StringVar(&s.peerTLS.Cert, "peer-tls-cert", "", "client certificate `file` (PEM) this server presents to nodes that require one (--tls-client-ca); with --peer-tls-key")
	fs.StringVar(&s.peerTLS.Key, "peer-tls-key", "", "private key `file` (PEM) of --peer-tls-cert")
	fs.StringVar(&s.etcdTLS.CA, "etcd-tls-ca", "", "CA bundle `file` (PEM) to verify etcd with, for https:// --etcd endpoints (default: the system's roots)")
	fs.StringVar(&s.etcdTLS.Cert, "etcd-tls-cert", "", "client certificate `file` (PEM) to present to etcd; with --etcd-tls-key")
	fs.StringVar(&s.etcdTLS.Key, "etcd-tls-key", "", "private key `file` (PEM) of --etcd-tls-cert")
	if amqp {
		fs.StringVar(&s.amqpTLS.CA, "amqp-tls-ca", "", "CA bundle `file` (PEM) to verify RabbitMQ with, for an amqps:// --amqp-url (default: the system's roots)")
		fs.StringVar(&s.amqpTLS.Cert, "amqp-tls-cert", "", "client certificate `file` (PEM) to present to RabbitMQ; with --amqp-tls-key")
		fs.StringVar(&s.amqpTLS.Key, "amqp-tls-key", "", "private key `file` (PEM) of --amqp-tls-cert")
	}
}

// open loads the token file and the TLS files, and reloads them on SIGHUP
// until ctx ends: a file that no longer loads is logged and what was
// loaded before stays in force.
func (s *securityFlags) open(ctx context.Context, logger *slog.Logger) (security, error) {
	sec := security{authReflection: s.authReflection, peerToken: s.peerToken, insecure: s.insecure}
	var reloads []reloadable
	if s.authFile != "" {
		f, err := auth.Open(s.authFile)
		if err != nil {
			return security{}, fmt.Errorf("--auth-file: %w", err)
		}
		logger.Info("bearer tokens required", slog.String("auth_file", s.authFile), slog.Int("tokens", f.Tokens().Len()))
		sec.auth = f
		reloads = append(reloads, reloadable{"token file", func() ([]any, error) {
			if err := f.Reload(); err != nil {
				return nil, err
			}
			return []any{slog.Int("tokens", f.Tokens().Len())}, nil
		}})
	} else if s.authReflection {
		return security{}, errors.New("--auth-reflection needs --auth-file")
	}
	load := func(flags string, files tlsfiles.Files) (*tlsfiles.Config, error) {
		if files.IsZero() {
			return nil, nil
		}
		c, err := tlsfiles.Load(files)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flags, err)
		}
		reloads = append(reloads, reloadable{"TLS files of " + flags, func() ([]any, error) { return nil, c.Reload() }})
		return c, nil
	}
	server, err := load("--tls-cert, --tls-key, --tls-client-ca", s.tls)
	if err != nil {
		return security{}, err
	}
	if server != nil {
		if sec.tls, err = server.Server(); err != nil {
			return security{}, fmt.Errorf("--tls-client-ca needs --tls-cert and --tls-key: %w", err)
		}
		logger.Info("serving TLS", slog.String("tls_cert", s.tls.Cert), slog.Bool("client_certificates_required", s.tls.CA != ""))
	}
	for _, c := range []struct {
		flags string
		files tlsfiles.Files
		dst   **tls.Config
	}{
		{"--peer-tls-*", s.peerTLS, &sec.peerTLS},
		{"--etcd-tls-*", s.etcdTLS, &sec.etcdTLS},
		{"--amqp-tls-*", s.amqpTLS, &sec.amqpTLS},
	} {
		client, err := load(c.flags, c.files)
		if err != nil {
			return security{}, err
		}
		if client != nil {
			*c.dst = client.Client()
		}
	}
	if len(reloads) > 0 {
		// Caught from now on: SIGHUP's default action ends the process.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		go reloadOnHangup(ctx, logger, hup, reloads)
	}
	return sec, nil
}

// reloadable is a file a server reloads on SIGHUP; reload returns log
// attributes describing what it loaded.
type reloadable struct {
	what   string
	reload func() ([]any, error)
}

func reloadOnHangup(ctx context.Context, logger *slog.Logger, hup chan os.Signal, reloads []reloadable) {
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		for _, r := range reloads {
			attrs, err := r.reload()
			if err != nil {
				logger.Error(r.what+" not reloaded; what was loaded before stays in force", slog.Any("error", err))
				continue
			}
			logger.Info(r.what+" reloaded", attrs...)
		}
	}
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
