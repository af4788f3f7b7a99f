package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/peterbourgon/ff/v3"
)

// envPrefix is the prefix of the environment variables that stand in for
// flags: --data-dir falls back to FLUX_DATA_DIR.
const envPrefix = "FLUX"

// errUsage marks errors the user can fix by changing the command line.
var errUsage = errors.New("usage")

// command is one `flux` subcommand.
type command struct {
	name    string
	args    string // positional arguments, for the usage line
	summary string
	flags   *flag.FlagSet
	run     func(env *environment, args []string) int
}

// newFlagSet returns a flag set whose errors and help go to the caller
// instead of the process being exited.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// envName is the environment variable that supplies a flag's default.
func envName(flagName string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parse parses args into the command's flags, with FLUX_ environment
// fallbacks, accepting flags after positional arguments (flux put k v --ttl
// 30s). Everything after "--" is positional.
func (c *command) parse(args []string) ([]string, error) {
	flags, positional := splitArgs(c.flags, args)
	if err := ff.Parse(c.flags, flags, ff.WithEnvVarPrefix(envPrefix)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, flag.ErrHelp
		}
		return nil, fmt.Errorf("%w: %s", errUsage, strings.TrimPrefix(err.Error(), "error parsing commandline arguments: "))
	}
	return append(c.flags.Args(), positional...), nil
}

// splitArgs separates flags (with their values) from positional arguments,
// so flags may follow positionals.
func splitArgs(fs *flag.FlagSet, args []string) (flags, positional []string) {
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			return flags, append(positional, args[i+1:]...)
		}
		if len(arg) < 2 || arg[0] != '-' {
			positional = append(positional, arg)
			continue
		}
		flags = append(flags, arg)
		name := strings.TrimLeft(arg, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil || isBool(f) || i+1 >= len(args) {
			continue
		}
		i++
		flags = append(flags, args[i])
	}
	return flags, positional
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// printUsage writes the command's help: usage line, summary, and each flag
// with its default and environment variable.
func (c *command) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", strings.TrimSpace("flux "+c.name+" [flags] "+c.args), c.summary)
	if !hasFlags(c.flags) {
		return
	}
	fmt.Fprintf(w, "\nFlags (each also read from the environment variable shown):\n")
	c.flags.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "  [%s]\n      %s", envName(f.Name), usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			fmt.Fprintf(w, " (default %q)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// stringList is a comma-separated list flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = nil
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}
