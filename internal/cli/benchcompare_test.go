package cli

import (
	"errors"
	"strings"
	"testing"
)

func TestBenchCompareUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--quick"},
		{"--compare", "--check-plan"},
		{"--trace", "--check-plan", "--knee"},
		{"--compare", "--multiples", "1,-2"},
		{"--compare", "--systems", "static,triton"},
		{"--trace", "--trace-duration", "0s"},
		{"--trace", "--trace-ramp", "0.6"},
		{"--trace", "--trace-base", "0"},
		{"--trace", "--trace-burst-every", "-1s"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			if _, err := runBenchCLI(t, args...); !errors.Is(err, ErrUsage) {
				t.Fatalf("bench %v: got %v, want a usage error", args, err)
			}
		})
	}
}

func TestBenchUsageDescribesCompareAndTrace(t *testing.T) {
	for _, want := range []string{"--compare", "--quick", "--trace", "iso-accuracy capacity", "--plots"} {
		if !strings.Contains(benchUsage, want) {
			t.Errorf("bench -h lacks %q", want)
		}
	}
}
