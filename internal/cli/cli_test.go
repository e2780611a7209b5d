package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
)

func runWithOutput(args ...string) (stdout, stderr string, err error) {
	return runWithOutputContext(context.Background(), args...)
}

func runWithOutputContext(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	return runWithEnv(ctx, func(string) string { return "" }, args...)
}

// runWithEnv runs the command line args with getenv as its environment and
// returns what it printed on stdout and stderr.
func runWithEnv(ctx context.Context, getenv func(string) string, args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	err = Run(ctx, Env{Stdout: &out, Stderr: &errOut, Getenv: getenv}, args)
	return out.String(), errOut.String(), err
}

// runCLI runs the command line args with the process environment and
// returns what it printed on stdout, logging its stderr when it fails.
func runCLI(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	stdout, stderr, err := runWithEnv(context.Background(), os.Getenv, args...)
	if err != nil {
		t.Logf("stderr: %s", stderr)
	}
	return stdout, err
}

// usageCase is a command line, without the subcommand, that must fail
// with ErrUsage.
type usageCase struct {
	name string
	args []string
}

// testUsageErrors runs the subcommand cmd with each case's args, each in a
// subtest named after the case, and wants ErrUsage from every one.
func testUsageErrors(t *testing.T, cmd string, cases []usageCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := runCLI(t, append([]string{cmd}, tc.args...)...); !errors.Is(err, ErrUsage) {
				t.Fatalf("%s %v: got %v, want a usage error", cmd, tc.args, err)
			}
		})
	}
}

// TestHelpGoesToStdout: help that was asked for is printed on stdout and
// succeeds; a wrong flag is a usage error on stderr, with nothing on stdout.
func TestHelpGoesToStdout(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		stdout, stderr, err := runWithOutput(args...)
		if err != nil || !strings.Contains(stdout, "Commands:") || stderr != "" {
			t.Errorf("%v: err %v, stdout %q, stderr %q; want the command list on stdout", args, err, stdout, stderr)
		}
	}
	if stdout, stderr, err := runWithOutput(); !errors.Is(err, ErrUsage) || stdout != "" || !strings.Contains(stderr, "Commands:") {
		t.Errorf("no command: err %v, stdout %q, stderr %q; want a usage error with the list on stderr", err, stdout, stderr)
	}
	cmds := [][]string{{"plan", "show"}}
	for _, c := range commands() {
		cmds = append(cmds, []string{c.name})
	}
	for _, cmd := range cmds {
		name := strings.Join(cmd, " ")
		t.Run(name, func(t *testing.T) {
			for _, h := range []string{"-h", "--help"} {
				stdout, stderr, err := runWithOutput(append(cmd, h)...)
				if err != nil || !strings.HasPrefix(stdout, "Usage: cascadeserve "+name) || !strings.Contains(stdout, "Flags:") || stderr != "" {
					t.Errorf("%s %s: err %v, stdout %q, stderr %q; want the usage on stdout", name, h, err, stdout, stderr)
				}
			}
			stdout, stderr, err := runWithOutput(append(cmd, "--no-such-flag")...)
			if !errors.Is(err, ErrUsage) || stdout != "" || !strings.HasPrefix(stderr, "flag provided but not defined: -no-such-flag\n") {
				t.Errorf("unknown flag: err %v, stdout %q, stderr %q; want a usage error on stderr", err, stdout, stderr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}} {
		stdout, stderr, err := runWithOutput(args...)
		if err != nil || !strings.HasPrefix(stdout, "cascadeserve ") || !strings.Contains(stdout, runtime.Version()) || stderr != "" {
			t.Errorf("%v: err %v, stdout %q, stderr %q; want the build with the Go version", args, err, stdout, stderr)
		}
	}
	if _, _, err := runWithOutput("version", "extra"); !errors.Is(err, ErrUsage) {
		t.Errorf("version extra: err %v, want a usage error", err)
	}
}
