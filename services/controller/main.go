// Command controller owns a CascadeServe pipeline's NATS topology, publishes
// its gear plan and switches gears with the load (see internal/controller).
// It is configured by CASCADE_* environment variables and serves the plan
// file CASCADE_PLAN; -h lists them, --version prints the build.
package main

import (
	"context"

	"github.com/cascadeserve/cascadeserve/internal/controller"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

func main() {
	var p *plan.Plan
	servicemain.Main("controller",
		"The controller owns a CascadeServe pipeline's NATS topology (streams, consumers, control bucket), publishes its gear plan (the file CASCADE_PLAN) and switches gears with the load.",
		func(environ map[string]string) (cfg controller.Config, err error) {
			if cfg, err = controller.ConfigFromEnv(environ); err == nil {
				p, err = controller.LoadPlan(cfg)
			}
			return cfg, err
		},
		func(ctx context.Context, cfg controller.Config, d servicemain.Deps) error {
			return controller.Run(ctx, cfg, controller.Deps{Deps: d, Plan: p})
		})
}
