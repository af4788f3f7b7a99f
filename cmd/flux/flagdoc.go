package main

import (
	"flag"
	"fmt"
	"strings"
)

// flagReference renders every command's flags as Markdown tables: the
// configuration reference in README.md, which a test keeps identical to
// the flag definitions.
func flagReference(cmds []*command) string {
	var b strings.Builder
	for _, c := range cmds {
		if !hasFlags(c.flags) {
			continue
		}
		fmt.Fprintf(&b, "\n#### `flux %s`\n\n", c.name)
		b.WriteString("| flag | environment | default | meaning |\n|---|---|---|---|\n")
		c.flags.VisitAll(func(f *flag.Flag) {
			name, usage := flag.UnquoteUsage(f)
			arg := ""
			if name != "" {
				arg = " " + name
			}
			def := "none"
			if f.DefValue != "" {
				def = "`" + f.DefValue + "`"
			}
			fmt.Fprintf(&b, "| `--%s%s` | `%s` | %s | %s |\n", f.Name, arg, envName(f.Name), def, strings.ReplaceAll(usage, "|", `\|`))
		})
	}
	return b.String()
}
