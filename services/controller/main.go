// Command controller owns a CascadeServe pipeline's NATS topology, publishes
// its gear plan and switches gears with the load (see internal/controller).
// It is configured by CASCADE_* environment variables; -h lists them,
// --version prints the build.
package main

import (
	"context"

	"github.com/cascadeserve/cascadeserve/internal/controller"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
)

func main() {
	servicemain.Main("controller",
		"The controller owns a CascadeServe pipeline's NATS topology (streams, consumers, control bucket), publishes its gear plan and switches gears with the load.",
		controller.ConfigFromEnv, func(ctx context.Context, cfg controller.Config, d servicemain.Deps) error {
			return controller.Run(ctx, cfg, controller.Deps{Logger: d.Logger, Registerer: d.Registerer, Conn: d.Conn, HTTP: d.HTTP})
		})
}
