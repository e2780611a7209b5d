package onnxrt

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ORTVersion is the ONNX Runtime release that scripts/install-onnxruntime.sh
// installs and FindLibrary looks for.
const ORTVersion = "1.30.0"

// CUDAORTVersion is the ONNX Runtime release of the CUDA library set that
// `scripts/install-onnxruntime.sh --cuda` installs (core, CUDA provider and
// providers_shared side by side) and FindLibraryFor looks for with the cuda
// provider.
const CUDAORTVersion = "1.29.0"

// LibraryEnv names the environment variable that overrides library discovery.
const LibraryEnv = "CASCADE_ONNXRUNTIME_LIB"

// ErrLibraryNotFound is returned (wrapped) when no ONNX Runtime shared library
// can be located.
var ErrLibraryNotFound = errors.New(
	"onnxruntime library not found: run scripts/install-onnxruntime.sh (or make setup), " +
		"or set " + LibraryEnv + " to libonnxruntime.so")

// cachedLibrary is the library path relative to the repository root (and to
// the directory of an installed binary).
var cachedLibrary = filepath.Join(".cache", "onnxruntime", ORTVersion, "libonnxruntime.so.1")

// cachedCUDALibrary is where the CUDA library set's core is installed.
var cachedCUDALibrary = filepath.Join(".cache", "onnxruntime", CUDAORTVersion+"-cuda", "libonnxruntime.so.1")

// ErrCUDALibraryNotFound is returned (wrapped) when the cuda provider is
// asked for and no CUDA library set is installed. It is also an
// ErrLibraryNotFound (errors.Is).
var ErrCUDALibraryNotFound error = libraryNotFound(
	"onnxruntime CUDA library set not found: run scripts/install-onnxruntime.sh --cuda (or make setup-gpu), " +
		"or set " + LibraryEnv + " to a libonnxruntime.so.1 with the CUDA provider next to it")

// libraryNotFound is an ErrLibraryNotFound with its own message.
type libraryNotFound string

func (e libraryNotFound) Error() string        { return string(e) }
func (e libraryNotFound) Is(target error) bool { return target == ErrLibraryNotFound }

// FindLibrary returns the path of the ONNX Runtime shared library.
//
// The order is: the file named by CASCADE_ONNXRUNTIME_LIB (read through
// getenv; an error if it does not exist); .cache/onnxruntime/<ORTVersion>/
// libonnxruntime.so.1 in the current directory or any of its parents, so tests
// run from any package directory find the repository's copy; the same relative
// path next to the running executable. Otherwise the error wraps
// ErrLibraryNotFound, whose message says how to install the library.
func FindLibrary(getenv func(string) string) (string, error) {
	return FindLibraryFor(ProviderCPU, getenv)
}

// FindLibraryFor is FindLibrary for an execution provider: with "cuda" the
// search (after CASCADE_ONNXRUNTIME_LIB) looks for the CUDA library set,
// .cache/onnxruntime/<CUDAORTVersion>-cuda/libonnxruntime.so.1, and its
// error wraps ErrCUDALibraryNotFound as well; any other provider searches
// as FindLibrary does.
func FindLibraryFor(provider string, getenv func(string) string) (string, error) {
	wd, _ := os.Getwd()
	exe, _ := os.Executable()
	if provider == ProviderCUDA {
		return findLibrary(getenv, wd, exe, cachedCUDALibrary, ErrCUDALibraryNotFound)
	}
	return findLibrary(getenv, wd, exe, cachedLibrary, ErrLibraryNotFound)
}

// findLibrary is FindLibraryFor with the working directory and executable
// path given ("" skips that step), the relative path searched for and the
// error wrapped (besides ErrLibraryNotFound) when nothing is found.
func findLibrary(getenv func(string) string, wd, exe, cached string, notFound error) (string, error) {
	if p := getenv(LibraryEnv); p != "" {
		if err := isFile(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w: %w", LibraryEnv, p, err, notFound)
		}
		return p, nil
	}
	var searched []string
	if wd != "" {
		for dir := wd; ; dir = filepath.Dir(dir) {
			p := filepath.Join(dir, cached)
			if isFile(p) == nil {
				return p, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
		searched = append(searched, filepath.Join(wd, cached)+" and parents")
	}
	if exe != "" {
		p := filepath.Join(filepath.Dir(exe), cached)
		if isFile(p) == nil {
			return p, nil
		}
		searched = append(searched, p)
	}
	return "", fmt.Errorf("searched %q: %w", searched, notFound)
}

func isFile(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	return nil
}
