package onnxrt

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkMNIST measures a warm Run of every MNIST ladder model found in the
// repository (models/mnist/onnx/*.onnx, or models/mnist/*.onnx), at the batch
// sizes of BenchmarkRun, reporting ns/item. It skips when no model exists yet.
//
//	go test -run '^$' -bench BenchmarkMNIST -benchtime 2s ./internal/onnxrt
func BenchmarkMNIST(b *testing.B) {
	root, err := repoRoot()
	if err != nil {
		b.Skipf("skipping: %v", err)
	}
	var models []string
	for _, pattern := range []string{"models/mnist/onnx/*.onnx", "models/mnist/*.onnx"} {
		m, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil {
			b.Fatal(err)
		}
		models = append(models, m...)
	}
	if len(models) == 0 {
		b.Skip("skipping: no models/mnist ONNX models yet")
	}
	rt := newRuntime(b)
	for _, path := range models {
		name := strings.TrimSuffix(filepath.Base(path), ".onnx")
		b.Run(name, func(b *testing.B) {
			s, err := rt.OpenFile(path, SessionOptions{})
			if err != nil {
				b.Fatalf("open %s: %v", path, err)
			}
			b.Cleanup(func() { _ = s.Close() })
			benchmarkSession(b, s)
		})
	}
}

// repoRoot returns the nearest parent directory holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}
