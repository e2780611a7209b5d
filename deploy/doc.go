// Package deploy holds no code: it is the home of the deployment files
// (Dockerfile, compose, nats-server configs, Prometheus rules, Grafana
// dashboard, Kubernetes manifests), and its tests check them: rules with
// promtool, manifests by parsing them against the topology's names, and the
// nats-server monitoring endpoint the way KEDA's scaler reads it.
package deploy
