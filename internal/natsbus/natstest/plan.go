package natstest

import (
	"testing"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// TinyPlan is the plan of the tests' pipeline "tiny": a 2×2 FP32 input
// (UINT8 accepted, scaled by 0.5), three classes, a ladder of two models,
// small and big, and two gears whose first models differ: "accurate"
// starts at small and escalates to big, "fast" is big alone.
func TinyPlan(t testing.TB) *plan.Plan {
	t.Helper()
	p, err := plan.Parse([]byte(`{
  "version": 1, "pipeline": "tiny", "slo": {"p95_ms": 50}, "capacity": 2, "confidence": "margin",
  "input": {"name": "x", "datatype": "FP32", "shape": [2, 2], "classes": 3, "uint8_scale": 0.5},
  "models": [
    {"name": "small", "file": "small.onnx", "profile": {"points": [{"batch": 1, "latency_ms": 0.1}]}},
    {"name": "big", "file": "big.onnx", "profile": {"points": [{"batch": 1, "latency_ms": 1}]}}
  ],
  "ladder": ["small", "big"],
  "gears": [
    {"id": "accurate", "max_qps": 100, "cascade": [{"model": "small", "threshold": 0.9}, {"model": "big", "threshold": 0}],
     "batching": {"max_batch": 8, "max_delay_ms": 2}, "runners": {"small": 0.5, "big": 0.5}},
    {"id": "fast", "max_qps": 1000, "cascade": [{"model": "big", "threshold": 0}],
     "batching": {"max_batch": 32, "max_delay_ms": 2}, "runners": {"big": 1}}
  ]
}`))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
