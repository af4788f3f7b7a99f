package main

import (
	"fmt"

	"github.com/fluxkv/fluxkv/platform/changelog"
)

func aofCommand() *command {
	c := &command{
		name: "aof",
		args: "check|repair FILE",
		summary: "Inspect or repair an append-only file segment (DATA_DIR/aof/*.aof) of a stopped node.\n" +
			"check reports the records and any damage (exit 1 if damaged); repair cuts the file back\n" +
			"to its last good record after printing what it drops.",
		flags: newFlagSet("aof"),
	}
	c.run = func(env *environment, args []string) int {
		if len(args) != 2 || (args[0] != "check" && args[0] != "repair") {
			return usageError(env, c.name, "want check FILE or repair FILE")
		}
		res, err := changelog.Check(changelog.OSFS{}, args[1])
		if err != nil {
			fmt.Fprintf(env.stderr, "flux aof: %v\n", err)
			return exitError
		}
		fmt.Fprintf(env.stdout, "%s: %d bytes, %d whole records", res.File, res.Size, res.Records)
		if res.Records > 0 {
			fmt.Fprintf(env.stdout, " (revisions %d to %d)", res.FirstRevision, res.LastRevision)
		}
		fmt.Fprintln(env.stdout)
		switch {
		case res.OK():
			fmt.Fprintln(env.stdout, "OK")
			return exitOK
		case res.Torn:
			fmt.Fprintf(env.stdout, "torn tail: the last %d bytes are a partial record, as a crash leaves (a node cuts them off itself at start)\n", res.Size-res.ValidBytes)
		default:
			fmt.Fprintf(env.stdout, "damaged: %v\n", res.Corrupt)
			fmt.Fprintf(env.stdout, "repair would drop %d bytes from offset %d, with every record in them\n", res.Size-res.ValidBytes, res.ValidBytes)
		}
		if args[0] == "check" {
			return exitNotFound
		}
		fmt.Fprintf(env.stdout, "dropping %d bytes from offset %d\n", res.Size-res.ValidBytes, res.ValidBytes)
		dropped, err := changelog.Repair(changelog.OSFS{}, res)
		if err != nil {
			fmt.Fprintf(env.stderr, "flux aof: %v\n", err)
			return exitError
		}
		fmt.Fprintf(env.stdout, "repaired: dropped %d bytes; %d records remain\n", dropped, res.Records)
		return exitOK
	}
	return c
}
