// Command stage-worker hosts models of a CascadeServe pipeline and serves
// their work queues (see internal/stageworker). It is configured by
// CASCADE_* environment variables; -h lists them, --version prints the build.
package main

import (
	"context"

	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/internal/stageworker"
)

func main() {
	servicemain.Main("stage-worker",
		"The stage worker hosts models of a CascadeServe pipeline and serves their work queues: it pulls batches as the gear in force says, runs them with ONNX Runtime, and answers or escalates each item.",
		stageworker.ConfigFromEnv, func(ctx context.Context, cfg stageworker.Config, d servicemain.Deps) error {
			return stageworker.Run(ctx, cfg, stageworker.Deps{Logger: d.Logger, Registerer: d.Registerer, Conn: d.Conn})
		})
}
