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

// FindLibrary returns the path of the ONNX Runtime shared library.
//
// The order is: the file named by CASCADE_ONNXRUNTIME_LIB (read through
// getenv; an error if it does not exist); .cache/onnxruntime/<ORTVersion>/
// libonnxruntime.so.1 in the current directory or any of its parents, so tests
// run from any package directory find the repository's copy; the same relative
// path next to the running executable. Otherwise the error wraps
// ErrLibraryNotFound, whose message says how to install the library.
func FindLibrary(getenv func(string) string) (string, error) {
	wd, _ := os.Getwd()
	exe, _ := os.Executable()
	return findLibrary(getenv, wd, exe)
}

// findLibrary is FindLibrary with the working directory and executable path
// given ("" skips that step).
func findLibrary(getenv func(string) string, wd, exe string) (string, error) {
	if p := getenv(LibraryEnv); p != "" {
		if err := isFile(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w: %w", LibraryEnv, p, err, ErrLibraryNotFound)
		}
		return p, nil
	}
	var searched []string
	if wd != "" {
		for dir := wd; ; dir = filepath.Dir(dir) {
			p := filepath.Join(dir, cachedLibrary)
			if isFile(p) == nil {
				return p, nil
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
		searched = append(searched, filepath.Join(wd, cachedLibrary)+" and parents")
	}
	if exe != "" {
		p := filepath.Join(filepath.Dir(exe), cachedLibrary)
		if isFile(p) == nil {
			return p, nil
		}
		searched = append(searched, p)
	}
	return "", fmt.Errorf("searched %q: %w", searched, ErrLibraryNotFound)
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
