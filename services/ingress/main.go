// Command ingress is the front door of a CascadeServe pipeline: NATS
// request-reply, durable jobs and HTTP Open Inference Protocol v2 (see
// internal/ingress). It is configured by CASCADE_* environment variables.
package main

import (
	"context"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/internal/servicemain"
)

func main() {
	servicemain.Main("ingress",
		"The ingress is the front door of a CascadeServe pipeline: NATS request-reply, durable jobs and HTTP Open Inference Protocol v2.",
		ingress.ConfigFromEnv, func(ctx context.Context, cfg ingress.Config, d servicemain.Deps) error {
			return ingress.Run(ctx, cfg, ingress.Deps{Deps: d})
		})
}
