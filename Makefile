# CascadeServe. `make help` lists the targets.
SHELL := /bin/bash
GO    ?= go
BIN   := bin/cascadeserve
# Tests fail (instead of skipping) when ONNX Runtime is missing.
export CASCADE_REQUIRE_ORT ?= 1

.PHONY: help setup build demo test test-short bench bench-pipeline fmt vet clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## fetch ONNX Runtime (pinned, checksummed) into .cache/
	@scripts/install-onnxruntime.sh >/dev/null

build: ## build the CLI and the three service binaries into bin/
	$(GO) build -o bin/ ./cmd/cascadeserve ./services/ingress ./services/stage-worker ./services/controller

demo: setup build ## run the whole system on MNIST under a rising and falling load (~1 min)
	$(BIN) demo

test: setup ## run every test with the race detector
	$(GO) vet ./...
	$(GO) test -race -timeout 20m ./...

test-short: setup ## run the tests without the race detector
	$(GO) test -timeout 10m ./...

bench: setup ## micro-benchmarks (runner, codec, batching, planner)
	$(GO) test -run '^$$' -bench . -benchmem ./...

bench-pipeline: setup build ## end-to-end throughput and latency of the pipeline vs. its baselines
	$(BIN) bench

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

clean: ## remove build outputs
	rm -rf bin
