package onnxrt

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// ErrClosed is returned when a closed Runtime or Session is used.
var ErrClosed = errors.New("onnxrt: closed")

// environment is the process-wide ONNX Runtime environment. onnxruntime_go
// keeps the loaded library and the OrtEnv in package variables, so this state
// cannot live in a Runtime value: it is the one piece of global state the
// package needs, guarded by its mutex and reference-counted by Runtimes.
var environment struct {
	mu      sync.Mutex
	refs    int
	libPath string // canonical path of the loaded library while refs > 0
}

// Runtime is a handle on the process-wide ONNX Runtime environment. It is safe
// for concurrent use. Close it when done; the environment is destroyed when the
// last Runtime of the process is closed.
type Runtime struct {
	libPath string

	// life is held for reading while a session is being created and for
	// writing by Close, so the environment is never destroyed under Open.
	life   sync.RWMutex
	closed bool

	mu       sync.Mutex // guards sessions
	sessions map[*Session]struct{}
}

// NewRuntime loads the ONNX Runtime shared library at libPath (see
// FindLibrary) and returns a handle on the shared environment. A process can
// hold any number of Runtimes, but all must name the same library.
func NewRuntime(libPath string) (*Runtime, error) {
	if err := isFile(libPath); err != nil {
		return nil, fmt.Errorf("onnxrt: load %s: %w: %w", libPath, err, ErrLibraryNotFound)
	}
	canon, err := canonicalPath(libPath)
	if err != nil {
		return nil, fmt.Errorf("onnxrt: load %s: %w", libPath, err)
	}

	environment.mu.Lock()
	defer environment.mu.Unlock()
	if environment.refs > 0 {
		if canon != environment.libPath {
			return nil, fmt.Errorf("onnxrt: load %s: process already uses %s", libPath, environment.libPath)
		}
	} else {
		ort.SetSharedLibraryPath(canon)
		if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
			return nil, fmt.Errorf("onnxrt: initialise onnxruntime from %s: %w", libPath, err)
		}
		environment.libPath = canon
	}
	environment.refs++
	return &Runtime{libPath: canon, sessions: make(map[*Session]struct{})}, nil
}

func canonicalPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// Version returns the version of the loaded ONNX Runtime library.
func (r *Runtime) Version() string {
	return ort.GetVersion()
}

// LibraryPath returns the canonical path of the loaded library.
func (r *Runtime) LibraryPath() string {
	return r.libPath
}

// Close closes every Session opened from r that is still open, then releases
// r's reference on the environment. Closing twice is a no-op.
func (r *Runtime) Close() error {
	r.life.Lock()
	defer r.life.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true

	r.mu.Lock()
	open := make([]*Session, 0, len(r.sessions))
	for s := range r.sessions {
		open = append(open, s)
	}
	r.mu.Unlock()

	var errs []error
	for _, s := range open {
		errs = append(errs, s.Close())
	}

	environment.mu.Lock()
	defer environment.mu.Unlock()
	environment.refs--
	if environment.refs == 0 {
		environment.libPath = ""
		if err := ort.DestroyEnvironment(); err != nil {
			errs = append(errs, fmt.Errorf("onnxrt: destroy environment: %w", err))
		}
	}
	return errors.Join(errs...)
}

// acquire keeps r open until the returned release is called; it fails if r
// is already closed.
func (r *Runtime) acquire() (release func(), err error) {
	r.life.RLock()
	if r.closed {
		r.life.RUnlock()
		return nil, ErrClosed
	}
	return r.life.RUnlock, nil
}

// track registers s as open. The caller holds acquire.
func (r *Runtime) track(s *Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions[s] = struct{}{}
}

func (r *Runtime) forget(s *Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.sessions, s)
}
