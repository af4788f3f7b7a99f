package main

import (
	"os"
	"slices"
	"strings"
)

// environWithout is the test's environment without the variables named:
// a FLUX_TOKEN the developer has set must not reach a run that checks
// what happens without one.
func environWithout(names ...string) []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.Contains(names, name)
	})
}
