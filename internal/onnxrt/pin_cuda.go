//go:build linux && cgo

package onnxrt

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

typedef int (*cs_register_fn)(void *, size_t, unsigned int);
typedef int (*cs_unregister_fn)(void *);
typedef const char *(*cs_error_fn)(int);

static cs_register_fn cs_register_p;
static cs_unregister_fn cs_unregister_p;
static cs_error_fn cs_error_p;

// cs_load opens the CUDA runtime and resolves the three functions used;
// NULL on success, else a message (valid until the next dl call; the Go
// side copies it at once, under its lock).
static const char *cs_load(const char *name) {
	void *h = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
	if (!h) {
		const char *e = dlerror();
		return e ? e : "dlopen failed";
	}
	cs_register_p = (cs_register_fn)dlsym(h, "cudaHostRegister");
	cs_unregister_p = (cs_unregister_fn)dlsym(h, "cudaHostUnregister");
	cs_error_p = (cs_error_fn)dlsym(h, "cudaGetErrorString");
	if (!cs_register_p || !cs_unregister_p || !cs_error_p) {
		return "cudaHostRegister, cudaHostUnregister or cudaGetErrorString not found";
	}
	return NULL;
}

// cudaHostRegisterPortable: pinned for every CUDA context, whichever
// device the provider runs on.
static int cs_register(void *p, size_t n) { return cs_register_p(p, n, 1); }
static int cs_unregister(void *p) { return cs_unregister_p(p); }
static const char *cs_error(int e) { return cs_error_p(e); }
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"
)

// cudaRuntimeLibrary is the CUDA runtime the ONNX Runtime 1.29 CUDA
// provider links; when the provider is loaded, dlopen returns that copy.
const cudaRuntimeLibrary = "libcudart.so.13"

var cudart struct {
	once sync.Once
	err  error
}

// cudaPinner page-locks host memory with cudaHostRegister.
type cudaPinner struct{}

// newCUDAPinner loads the CUDA runtime (once per process).
func newCUDAPinner() (pinner, error) {
	cudart.once.Do(func() {
		name := C.CString(cudaRuntimeLibrary)
		defer C.free(unsafe.Pointer(name))
		if msg := C.cs_load(name); msg != nil {
			cudart.err = fmt.Errorf("pin host buffers: load %s: %s: %w", cudaRuntimeLibrary, C.GoString(msg), ErrProviderUnavailable)
		}
	})
	if cudart.err != nil {
		return nil, cudart.err
	}
	return cudaPinner{}, nil
}

func (cudaPinner) pin(b []byte) error {
	if rc := C.cs_register(unsafe.Pointer(&b[0]), C.size_t(len(b))); rc != 0 {
		return fmt.Errorf("cudaHostRegister(%d bytes): %s (error %d)", len(b), C.GoString(C.cs_error(rc)), int(rc))
	}
	return nil
}

func (cudaPinner) unpin(b []byte) error {
	if rc := C.cs_unregister(unsafe.Pointer(&b[0])); rc != 0 {
		return fmt.Errorf("cudaHostUnregister: %s (error %d)", C.GoString(C.cs_error(rc)), int(rc))
	}
	return nil
}
