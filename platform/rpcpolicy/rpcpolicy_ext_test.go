package rpcpolicy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/fluxkv/fluxkv/platform/rpcpolicy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestRetryable(t *testing.T) {
	t.Parallel()
	unavailable := connect.NewError(connect.CodeUnavailable, errors.New("down"))
	tests := []struct {
		level descriptorpb.MethodOptions_IdempotencyLevel
		err   error
		want  bool
	}{
		{descriptorpb.MethodOptions_NO_SIDE_EFFECTS, unavailable, true},
		{descriptorpb.MethodOptions_IDEMPOTENT, unavailable, true},
		{descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN, unavailable, false},
		{descriptorpb.MethodOptions_NO_SIDE_EFFECTS, connect.NewError(connect.CodeDeadlineExceeded, errors.New("slow")), false},
		{descriptorpb.MethodOptions_NO_SIDE_EFFECTS, connect.NewError(connect.CodeInternal, errors.New("bug")), false},
		{descriptorpb.MethodOptions_IDEMPOTENT, errors.New("not a connect error"), false},
		{descriptorpb.MethodOptions_IDEMPOTENT, nil, false},
	}
	for i, tt := range tests {
		if got := rpcpolicy.Retryable(tt.level, tt.err); got != tt.want {
			t.Errorf("#%d Retryable(%v, %v): got %v, want %v", i, tt.level, tt.err, got, tt.want)
		}
	}
}

func TestWithDefaultTimeout(t *testing.T) {
	t.Parallel()
	ctx, cancel := rpcpolicy.WithDefaultTimeout(context.Background(), time.Minute)
	defer cancel()
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > time.Minute {
		t.Errorf("no deadline: got %v %v, want one within a minute", dl, ok)
	}

	// A caller's own deadline wins, even when it is longer than the default.
	parent, cancelParent := context.WithTimeout(context.Background(), time.Hour)
	defer cancelParent()
	want, _ := parent.Deadline()
	ctx, cancel = rpcpolicy.WithDefaultTimeout(parent, time.Second)
	defer cancel()
	if got, _ := ctx.Deadline(); !got.Equal(want) {
		t.Errorf("caller deadline: got %v, want %v", got, want)
	}

	ctx, cancel = rpcpolicy.WithDefaultTimeout(context.Background(), 0)
	defer cancel()
	if _, ok := ctx.Deadline(); ok {
		t.Error("zero default: got a deadline, want none")
	}
}

// metricValue returns the value of the counter or gauge name whose labels
// include labels, and whether it exists.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			matched := 0
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v == l.GetValue() {
					matched++
				}
			}
			if matched == len(labels) {
				if c := m.GetCounter(); c != nil {
					return c.GetValue(), true
				}
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}
