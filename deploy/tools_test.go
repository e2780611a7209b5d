package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// requireTool returns the path of an external tool. When it is missing the
// test is skipped, except in CI (CI=true), where .ci/run installs it and a
// missing tool fails the test.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not on PATH (CI=true): install Debian's %s package (.ci/run does)", name, pkg)
		}
		t.Skipf("%s is not on PATH (Debian package %s); set CI=true to make this a failure", name, pkg)
	}
	return path
}

// run runs a tool in dir and fails the test with its output when it fails.
func run(t *testing.T, dir, tool string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v in %s: %v\n%s", tool, args, dir, err, out)
	}
	return string(out)
}
