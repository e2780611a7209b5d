//go:build !unix

package cli

import (
	"errors"
	"time"
)

// processCPU is not available on this platform.
func processCPU() (time.Duration, error) {
	return 0, errors.New("process CPU time is only measured on unix")
}
