package ingress_test

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cascadeserve/cascadeserve/internal/ingress"
	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

func TestConfigFromEnv(t *testing.T) {
	cfg, err := ingress.ConfigFromEnv(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Pipeline != "mnist" || cfg.HTTPAddr != "127.0.0.1:8080" || cfg.MetricsAddr != "127.0.0.1:9092" || strings.Join(cfg.InboxPrefixes, ",") != "_INBOX.,_R_." || cfg.DefaultTimeout != 5*time.Second ||
		cfg.MaxTimeout != time.Minute || cfg.MaxBodyBytes != 4<<20 || cfg.StatsInterval != 100*time.Millisecond || cfg.JobsBatch != 64 {
		t.Fatalf("defaults = %+v", cfg)
	}
	cfg, err = ingress.ConfigFromEnv(map[string]string{
		"CASCADE_HTTP_ADDR": "", "CASCADE_METRICS_ADDR": "", "CASCADE_DEFAULT_TIMEOUT": "250ms",
		"CASCADE_MAX_TIMEOUT": "2s", "CASCADE_INGRESS_INSTANCE": "in-1", "CASCADE_PIPELINE": "other",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != "" || cfg.MetricsAddr != "" || cfg.DefaultTimeout != 250*time.Millisecond || cfg.MaxTimeout != 2*time.Second ||
		cfg.Instance != "in-1" || cfg.Pipeline != "other" {
		t.Fatalf("overrides = %+v", cfg)
	}
	// Every problem is reported at once.
	_, err = ingress.ConfigFromEnv(map[string]string{
		"CASCADE_PIPELINE": "a.b", "CASCADE_DEFAULT_TIMEOUT": "10s", "CASCADE_MAX_TIMEOUT": "1s",
		"CASCADE_INGRESS_MAX_BODY_BYTES": "10", "CASCADE_LOG_LEVEL": "loud", "CASCADE_INGRESS_INSTANCE": "a b",
	})
	if !errors.Is(err, ingress.ErrInvalidConfig) {
		t.Fatalf("err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{"CASCADE_PIPELINE", "CASCADE_MAX_TIMEOUT", "CASCADE_INGRESS_MAX_BODY_BYTES", "CASCADE_LOG_LEVEL", "CASCADE_INGRESS_INSTANCE"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
	if _, err := ingress.ConfigFromEnv(map[string]string{"CASCADE_DEFAULT_TIMEOUT": "soon"}); err == nil {
		t.Error("unparsable duration accepted")
	}
}

func TestCanonicalize(t *testing.T) {
	in := plan.Input{Name: "x", Datatype: "FP32", Shape: []int64{2, 2}, Classes: 3, UINT8Scale: 0.5}
	fp := func(shape []int64, v ...float32) wire.Tensor { return wire.FP32Tensor(shape, v) }
	for _, tc := range []struct {
		name    string
		in      plan.Input
		t       wire.Tensor
		want    []float32
		wantErr string
	}{
		{"FP32 item shape", in, fp([]int64{2, 2}, 1, 2, 3, 4), []float32{1, 2, 3, 4}, ""},
		{"FP32 leading batch axis", in, fp([]int64{1, 2, 2}, 1, 2, 3, 4), []float32{1, 2, 3, 4}, ""},
		{"UINT8 scaled", in, wire.Tensor{Datatype: wire.UINT8, Shape: []int64{2, 2}, Data: []byte{0, 1, 2, 255}}, []float32{0, 0.5, 1, 127.5}, ""},
		{"UINT8 not accepted", plan.Input{Shape: []int64{2, 2}}, wire.Tensor{Datatype: wire.UINT8, Shape: []int64{2, 2}, Data: []byte{0, 1, 2, 3}}, nil, "UINT8 is not accepted"},
		{"unknown datatype", in, wire.Tensor{Datatype: "FP16", Shape: []int64{2, 2}, Data: make([]byte, 8)}, nil, `"FP16" is not accepted`},
		{"flat shape", in, fp([]int64{4}, 1, 2, 3, 4), nil, "does not match"},
		{"batch of two", in, fp([]int64{2, 2, 2}, 1, 2, 3, 4, 5, 6, 7, 8), nil, "does not match"},
		{"no shape", in, fp(nil, 1, 2, 3, 4), nil, "does not match"},
		{"short data", in, fp([]int64{2, 2}, 1, 2, 3), nil, "needs 16"},
		{"NaN", in, fp([]int64{2, 2}, 1, float32(math.NaN()), 3, 4), nil, "must be finite"},
		{"+Inf", in, fp([]int64{2, 2}, 1, 2, float32(math.Inf(1)), 4), nil, "must be finite"},
		{"-Inf", in, fp([]int64{2, 2}, float32(math.Inf(-1)), 2, 3, 4), nil, "must be finite"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ingress.Canonicalize(tc.t, tc.in)
			if tc.wantErr != "" {
				if wire.CodeOf(err) != wire.CodeInvalidInput || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want invalid_input mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// The datatype travels as sent; the worker scales UINT8.
			if got.Datatype != tc.t.Datatype || !reflect.DeepEqual(got.Shape, tc.in.Shape) {
				t.Fatalf("tensor %s %v, want %s %v", got.Datatype, got.Shape, tc.t.Datatype, tc.in.Shape)
			}
			vals, err := got.AppendFloat32s(nil, float32(tc.in.UINT8Scale))
			if err != nil || !reflect.DeepEqual(vals, tc.want) {
				t.Fatalf("values %v (%v), want %v", vals, err, tc.want)
			}
		})
	}
}

func TestDeadline(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	const def, maxT = 5 * time.Second, time.Minute
	for _, tc := range []struct {
		name     string
		req      wire.Request
		want     time.Time
		wantCode wire.Code
	}{
		{"default", wire.Request{}, now.Add(def), ""},
		{"timeout", wire.Request{TimeoutMs: 250}, now.Add(250 * time.Millisecond), ""},
		{"timeout capped", wire.Request{TimeoutMs: 3_600_000}, now.Add(maxT), ""},
		{"huge timeout capped", wire.Request{TimeoutMs: math.MaxInt64}, now.Add(maxT), ""},
		{"deadline wins", wire.Request{TimeoutMs: 250, DeadlineUnixMs: now.UnixMilli() + 2000}, now.Add(2 * time.Second), ""},
		{"deadline capped", wire.Request{DeadlineUnixMs: now.UnixMilli() + 3_600_000}, now.Add(maxT), ""},
		{"huge deadline capped", wire.Request{DeadlineUnixMs: math.MaxInt64}, now.Add(maxT), ""},
		{"deadline past", wire.Request{DeadlineUnixMs: now.UnixMilli() - 1}, time.Time{}, wire.CodeDeadlineExceeded},
		{"deadline now", wire.Request{DeadlineUnixMs: now.UnixMilli()}, time.Time{}, wire.CodeDeadlineExceeded},
		{"negative timeout", wire.Request{TimeoutMs: -1}, time.Time{}, wire.CodeInvalidInput},
		{"negative deadline", wire.Request{DeadlineUnixMs: -1}, time.Time{}, wire.CodeInvalidInput},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ingress.Deadline(&tc.req, now, def, maxT)
			if tc.wantCode != "" {
				if wire.CodeOf(err) != tc.wantCode {
					t.Fatalf("err = %v, want code %s", err, tc.wantCode)
				}
				return
			}
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("Deadline = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestHTTPStatus(t *testing.T) {
	for code, want := range map[wire.Code]int{
		wire.CodeInvalidInput: 400, wire.CodeDuplicate: 409, wire.CodeOverloaded: 429,
		wire.CodeDeadlineExceeded: 504, wire.CodeUnavailable: 503, wire.CodeInternal: 500, "something_new": 500,
	} {
		if got := ingress.HTTPStatus(code); got != want {
			t.Errorf("HTTPStatus(%s) = %d, want %d", code, got, want)
		}
	}
}
