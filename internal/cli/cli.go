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

func commands() []command {
	return []command{
		upCommand(),
		sendCommand(),
		replayCommand(),
		profileCommand(),
		planCommand(),
		simulateCommand(),
		benchCommand(),
		demoCommand(),
		healthCommand(),
	}
}

// Run runs the subcommand named by args[0].
func Run(ctx context.Context, env Env, args []string) error {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(env.Stderr, cmds)
		if len(args) == 0 {
			return fmt.Errorf("%w: no command given", ErrUsage)
		}
		return nil
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

// newFlagSet returns a flag set that reports errors instead of exiting and
// prints its usage to env.Stderr.
func newFlagSet(env Env, name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: cascadeserve %s\n\nFlags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}
