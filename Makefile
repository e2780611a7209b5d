# CascadeServe. `make help` lists the targets.
SHELL := /bin/bash
GO    ?= go
BIN   := bin/cascadeserve
# Tests fail (instead of skipping) when ONNX Runtime is missing.
export CASCADE_REQUIRE_ORT ?= 1

.PHONY: help setup setup-gpu build demo test test-short bench bench-pipeline gpu-bundle gpu-check fmt vet clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## fetch ONNX Runtime (pinned, checksummed) into .cache/
	@scripts/install-onnxruntime.sh >/dev/null

setup-gpu: ## fetch the ONNX Runtime 1.29 CUDA library set (pinned, checksummed) into .cache/, check the host's CUDA libraries
	@scripts/install-onnxruntime.sh --cuda

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

gpu-bundle: ## build the binaries and CUDA libraries scripts/gpu-check.sh needs on a GPU host without Go, in pieces, into .gpu-bundle/
	scripts/make-gpu-bundle.sh

gpu-check: ## the GPU check (needs a GPU): unit test, MNIST and ResNet profiles vs PyTorch, bench, into ./gpu-check-<date>/
	scripts/gpu-check.sh

fmt: ## format the code
	gofmt -w $$(git ls-files '*.go')

clean: ## remove build outputs
	rm -rf bin .gpu-bundle
