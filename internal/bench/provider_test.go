package bench

import "testing"

// TestSystemsGetTheWorkerSettings: the systems a bench starts run their
// stage worker with the bench's provider settings, and the report says
// which provider it was.
func TestSystemsGetTheWorkerSettings(t *testing.T) {
	workerEnv := map[string]string{"CASCADE_WORKER_PROVIDER": "cuda", "CASCADE_WORKER_CUDA_TF32": "false", "CASCADE_GEAR": "ignored"}
	sc := Config{
		Live: Live{Runners: 3, ONNXRuntimeLib: "/lib.so", WorkerEnv: workerEnv},
	}.systemConfig("g2")
	for k, want := range map[string]string{
		"CASCADE_WORKER_PROVIDER": "cuda", "CASCADE_WORKER_CUDA_TF32": "false", "CASCADE_GEAR": "g2",
		"CASCADE_WORKER_RUNNERS": "3", "CASCADE_ONNXRUNTIME_LIB": "/lib.so",
	} {
		if got := sc.Env[k]; got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if workerEnv["CASCADE_GEAR"] != "ignored" {
		t.Error("systemConfig changed the caller's map")
	}
	p := mnistPlan(t)
	if e := environment(p, "", 2, workerEnv); e.Provider != "cuda" {
		t.Errorf("environment provider %q, want cuda", e.Provider)
	}
	if e := environment(p, "", 2, nil); e.Provider != "cpu" {
		t.Errorf("environment provider %q without settings, want cpu", e.Provider)
	}
}
