// Command cascadeserve is the one CLI of CascadeServe: it runs the whole
// system in one process (up), sends requests (send), and drives the offline
// phase (replay, profile, plan, simulate) and benchmarks (bench, demo).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cascadeserve/cascadeserve/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
	if err := cli.Run(ctx, env, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cascadeserve:", err)
		if errors.Is(err, cli.ErrUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
