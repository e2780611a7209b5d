// Package buildinfo says what a binary was built from, as the Go toolchain
// recorded it (runtime/debug.ReadBuildInfo): the module version, the VCS
// revision and whether the work tree had uncommitted changes, and the Go
// version. The CLI and the service binaries print it for --version.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Info is the build of a binary. Fields the toolchain did not record are
// empty: `go build -buildvcs=false`, `go run` and test binaries carry no
// VCS settings.
type Info struct {
	// Version is the main module's version: a tag, a pseudo-version (with
	// "+dirty" for a modified work tree) or "(devel)".
	Version string
	// Revision is the VCS commit the binary was built from; Time its
	// commit time (RFC 3339).
	Revision string
	Time     string
	// Modified is set when the work tree had uncommitted changes.
	Modified bool
	// GoVersion is the toolchain that built the binary, e.g. go1.26.8.
	GoVersion string
	// Platform is GOOS/GOARCH.
	Platform string
}

// Read returns the running binary's build.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	}
	return FromBuildInfo(bi)
}

// FromBuildInfo extracts an Info from what debug.ReadBuildInfo returns.
func FromBuildInfo(bi *debug.BuildInfo) Info {
	in := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	goos, goarch := runtime.GOOS, runtime.GOARCH
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.time":
			in.Time = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		case "GOOS":
			goos = s.Value
		case "GOARCH":
			goarch = s.Value
		}
	}
	if in.Version == "" {
		in.Version = "(devel)"
	}
	if in.GoVersion == "" {
		in.GoVersion = runtime.Version()
	}
	in.Platform = goos + "/" + goarch
	return in
}

// String is the one line --version prints, after the program's name:
//
//	v1.2.0 (revision 0123abcd…, 2026-01-02T03:04:05Z, modified) go1.26.8 linux/amd64
//
// without the parenthesis when no revision was recorded.
func (in Info) String() string {
	var b strings.Builder
	b.WriteString(in.Version)
	if in.Revision != "" {
		parts := []string{"revision " + in.Revision}
		if in.Time != "" {
			parts = append(parts, in.Time)
		}
		if in.Modified {
			parts = append(parts, "modified")
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, " %s %s", in.GoVersion, in.Platform)
	return b.String()
}
