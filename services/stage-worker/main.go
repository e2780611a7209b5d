// Command stage-worker hosts models of a CascadeServe pipeline and serves
// their work queues (see internal/stageworker). It is configured by
// CASCADE_* environment variables and reads the plan's model files from
// CASCADE_MODEL_DIR; -h lists them, --version prints the build.
package main

import (
	"context"
	"io/fs"

	"github.com/cascadeserve/cascadeserve/internal/servicemain"
	"github.com/cascadeserve/cascadeserve/internal/stageworker"
)

func main() {
	var models fs.FS
	servicemain.Main("stage-worker",
		"The stage worker hosts models of a CascadeServe pipeline and serves their work queues: it pulls batches as the gear in force says, runs them with ONNX Runtime (the plan's model files, read from CASCADE_MODEL_DIR), and answers or escalates each item.",
		func(environ map[string]string) (cfg stageworker.Config, err error) {
			if cfg, err = stageworker.ConfigFromEnv(environ); err == nil {
				models, err = stageworker.ModelFiles(cfg)
			}
			return cfg, err
		},
		func(ctx context.Context, cfg stageworker.Config, d servicemain.Deps) error {
			return stageworker.Run(ctx, cfg, stageworker.Deps{Deps: d, Models: models})
		})
}
