// Command flux is the single Flux-KV binary: `flux node` runs a node, `flux
// dev` a whole cluster in one process, `flux get|put|del|scan|watch|health`
// and `flux cluster` are the command-line client, `flux bench` loads a
// cluster (or Redis, for comparison), and `flux cdc tail` consumes the
// change events nodes publish to RabbitMQ.
//
// Exit codes: 0 success; 1 the key was not found, a condition did not hold,
// or the target is not serving; 2 a usage, connection or server error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const (
	exitOK       = 0
	exitNotFound = 1 // also: condition failed, not serving
	exitError    = 2 // usage, connection and server errors
)

// environment is what a command may touch, so tests run commands in-process.
type environment struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(&environment{ctx: ctx, stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

func commands() []*command {
	return []*command{
		devCommand(),
		nodeCommand(),
		gatewayCommand(),
		getCommand(),
		putCommand(),
		delCommand(),
		scanCommand(),
		watchCommand(),
		healthCommand(),
		benchCommand(),
		clusterCommand(),
		cdcCommand(),
		aofCommand(),
		tokenCommand(),
		versionCommand(),
	}
}

// run executes the command line args (without the program name) and returns
// the exit code.
func run(env *environment, args []string) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			for _, c := range cmds {
				if c.name == args[1] {
					c.printUsage(env.stdout)
					return exitOK
				}
			}
		}
		printCommands(env.stdout, cmds)
		if len(args) == 0 {
			return exitError
		}
		return exitOK
	}
	for _, c := range cmds {
		if c.name != args[0] {
			continue
		}
		rest, err := c.parse(args[1:])
		if errors.Is(err, flag.ErrHelp) {
			c.printUsage(env.stdout)
			return exitOK
		}
		if err != nil {
			fmt.Fprintf(env.stderr, "flux %s: %v\n", c.name, err)
			fmt.Fprintf(env.stderr, "Run 'flux %s --help' for usage.\n", c.name)
			return exitError
		}
		return c.run(env, rest)
	}
	fmt.Fprintf(env.stderr, "flux: unknown command %q\nRun 'flux help' for the list of commands.\n", args[0])
	return exitError
}

func printCommands(w io.Writer, cmds []*command) {
	fmt.Fprintln(w, "Flux-KV: a distributed in-memory key-value store with a schema-first API.")
	fmt.Fprintln(w, "\nUsage: flux <command> [flags] [arguments]\n\nCommands:")
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'flux <command> --help' for a command's flags.")
}

// usageError reports a bad command line the way flag errors are reported.
func usageError(env *environment, c string, format string, args ...any) int {
	fmt.Fprintf(env.stderr, "flux %s: %s\n", c, fmt.Sprintf(format, args...))
	fmt.Fprintf(env.stderr, "Run 'flux %s --help' for usage.\n", c)
	return exitError
}
