// Package buildinfo reports which build of Flux-KV is running. Release builds
// stamp Version with -ldflags "-X github.com/fluxkv/fluxkv/platform/buildinfo.Version=v1.2.3";
// other builds fall back to the module version or VCS revision Go recorded.
package buildinfo

import "runtime/debug"

// Version is the release version, set at link time. Read it through
// String, which supplies a fallback when it is unset.
var Version = ""

// String returns the version of this binary: the stamped Version, else the
// main module's version, else the VCS revision, else "devel".
func String() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}
