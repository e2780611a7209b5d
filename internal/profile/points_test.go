package profile

import (
	"reflect"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
)

// TestProfilePointsClampNoise: a batch's time stays between the smaller
// batch's and that batch's run as often as it takes to cover it.
func TestProfilePointsClampNoise(t *testing.T) {
	ms := func(x float64) time.Duration { return time.Duration(x * float64(time.Millisecond)) }
	got := profilePoints([]int{1, 2, 4, 8}, []time.Duration{ms(2.5), ms(9.2), ms(1), ms(19)})
	want := []plan.ProfilePoint{
		{Batch: 1, LatencyMs: 2.5},
		{Batch: 2, LatencyMs: 5},  // 9.2: a slow spell, at most two batches of 1
		{Batch: 4, LatencyMs: 5},  // 1: noise, at least the batch of 2
		{Batch: 8, LatencyMs: 10}, // 19: at most two batches of 4
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("points %+v, want %+v", got, want)
	}
}
