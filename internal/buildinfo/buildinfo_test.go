package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	tests := []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"stamped and modified", debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Path: "github.com/cascadeserve/cascadeserve", Version: "v0.0.0-20260102030405-0123456789ab+dirty"},
			Settings: []debug.BuildSetting{
				{Key: "GOOS", Value: "linux"}, {Key: "GOARCH", Value: "arm64"},
				{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
				{Key: "vcs.modified", Value: "true"},
			},
		}, "v0.0.0-20260102030405-0123456789ab+dirty (revision 0123456789abcdef, 2026-01-02T03:04:05Z, modified) go1.26.8 linux/arm64"},
		{"clean tag", debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Version: "v1.2.0"},
			Settings: []debug.BuildSetting{
				{Key: "GOOS", Value: "linux"}, {Key: "GOARCH", Value: "amd64"},
				{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "false"},
			},
		}, "v1.2.0 (revision abc) go1.26.8 linux/amd64"},
		{"no vcs", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "GOOS", Value: "darwin"}, {Key: "GOARCH", Value: "arm64"}}},
			"(devel) go1.26.8 darwin/arm64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FromBuildInfo(&tt.bi).String(); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestReadNamesTheToolchain(t *testing.T) {
	got := Read().String()
	if !strings.Contains(got, runtime.Version()) || !strings.Contains(got, runtime.GOOS+"/"+runtime.GOARCH) {
		t.Errorf("Read() = %q, want the Go version %s and the platform", got, runtime.Version())
	}
}
