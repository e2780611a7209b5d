package cli

import (
	"strings"
	"testing"
)

func TestBenchCompareUsageErrors(t *testing.T) {
	var cases []usageCase
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
		cases = append(cases, usageCase{strings.Join(args, " "), args})
	}
	testUsageErrors(t, "bench", cases)
}

func TestBenchUsageDescribesCompareAndTrace(t *testing.T) {
	for _, want := range []string{"--compare", "--quick", "--trace", "iso-accuracy capacity", "--plots"} {
		if !strings.Contains(benchUsage, want) {
			t.Errorf("bench -h lacks %q", want)
		}
	}
}
