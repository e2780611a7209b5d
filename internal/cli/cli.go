// Package cli implements the cascadeserve command line: one subcommand per
// file, each a small adapter from flags to the packages that do the work.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/cascadeserve/cascadeserve/internal/buildinfo"
)

// Env is what a subcommand may touch of the outside world. Passing it in
// (instead of using os.Stdout and friends) keeps every command testable.
type Env struct {
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads configuration from the environment (os.Getenv in main).
	Getenv func(string) string
}

// command is one subcommand of the CLI.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env Env, args []string) error
}

// ErrUsage marks errors caused by how the command was called; main exits 2.
var ErrUsage = errors.New("usage")

// commands are the CLI's subcommands, in the order help lists them.
func commands() []command {
	return []command{
		{name: "up", summary: "run everything in one process: embedded nats-server, controller, ingress, workers", run: runUp},
		{name: "send", summary: "send MNIST test images (or an image file) and print the results", run: runSend},
		{name: "replay", summary: "run a model ladder over a labeled data set and write replay data", run: runReplay},
		{name: "profile", summary: "measure model latency per batch size and the NATS hop cost", run: runProfile},
		{name: "plan", summary: "plan gears from replay data and a profile (plan show: inspect a plan)", run: runPlan},
		{name: "simulate", summary: "simulate a plan's gears at scale", run: runSimulate},
		{name: "bench", summary: "benchmark the pipeline end to end (--check-plan: predictions vs reality)", run: runBench},
		{name: "demo", summary: "run the whole system on MNIST under a load that rises past the accurate gear and falls back", run: runDemo},
		{name: "health", summary: "probe a service's readiness (/readyz); exit 0 when ready: a Docker HEALTHCHECK", run: runHealth},
		{name: "version", summary: "print the build: module version, VCS revision, Go version (also --version)", run: runVersion},
	}
}

// Run runs the subcommand named by args[0]. Help asked for goes to
// env.Stdout; usage printed because of a mistake goes to env.Stderr.
func Run(ctx context.Context, env Env, args []string) error {
	cmds := commands()
	if len(args) == 0 {
		printUsage(env.Stderr, cmds)
		return fmt.Errorf("%w: no command given", ErrUsage)
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		printUsage(env.Stdout, cmds)
		return nil
	case "-version", "--version":
		args = []string{"version"}
	}
	for _, c := range cmds {
		if c.name == args[0] {
			err := c.run(ctx, env, args[1:])
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
	}
	printUsage(env.Stderr, cmds)
	return fmt.Errorf("%w: unknown command %q", ErrUsage, args[0])
}

func printUsage(w io.Writer, cmds []command) {
	var b strings.Builder
	b.WriteString("cascadeserve serves ML model cascades over NATS JetStream.\n\nUsage: cascadeserve <command> [flags]\n\nCommands:\n")
	for _, c := range cmds {
		fmt.Fprintf(&b, "  %-10s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun 'cascadeserve <command> -h' for a command's flags.\n")
	io.WriteString(w, b.String())
}

// newFlagSet returns a flag set that reports errors instead of exiting. Its
// usage goes to env.Stdout when asked for (-h, --help) and to env.Stderr,
// after the error, when the flags are wrong.
func newFlagSet(env Env, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// The flag package writes a parse error to the output before it calls
	// Usage, and writes nothing before Usage when help was asked for.
	out := &parseOutput{w: env.Stderr}
	fs.SetOutput(out)
	fs.Usage = func() {
		w := env.Stdout
		if out.wrote {
			w = env.Stderr
		}
		var b strings.Builder
		fmt.Fprintf(&b, "Usage: cascadeserve %s\n\nFlags:\n", usage)
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(out)
		io.WriteString(w, b.String())
	}
	return fs
}

// parseOutput is a flag set's output: it passes writes on to w and
// remembers that there were some.
type parseOutput struct {
	w     io.Writer
	wrote bool
}

func (o *parseOutput) Write(p []byte) (int, error) {
	o.wrote = true
	return o.w.Write(p)
}

// parseFlags parses a subcommand's flags and refuses positional arguments.
// Help asked for comes back as flag.ErrHelp (Run answers it with nil); any
// other mistake is an ErrUsage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: %s: unexpected arguments %q", ErrUsage, fs.Name(), fs.Args())
	}
	return nil
}

// parseCommandFlags makes the flag set of the subcommand name, lets
// register define its flags and parses args with parseFlags.
func parseCommandFlags(env Env, name, usage string, register func(*flag.FlagSet), args []string) (*flag.FlagSet, error) {
	fs := newFlagSet(env, name, usage)
	register(fs)
	return fs, parseFlags(fs, args)
}

func runVersion(_ context.Context, env Env, args []string) error {
	fs := newFlagSet(env, "version", "version")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "cascadeserve %s\n", buildinfo.Read())
	return nil
}
