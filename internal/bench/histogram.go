package bench

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies from 1µs to a minute are told apart to about 1%: two
// significant digits keep a histogram near 20 KiB, so every worker can
// have its own and record without locks; they are merged at the end.
const (
	histMin     = int64(time.Microsecond)
	histMax     = int64(time.Minute)
	histSigFigs = 2
)

// Histogram records latencies in an HDR histogram, plus their exact sum
// and maximum. It is not safe for concurrent use: give each goroutine its
// own and Merge them.
type Histogram struct {
	h   *hdrhistogram.Histogram
	sum int64 // nanoseconds
	max int64 // nanoseconds
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{h: hdrhistogram.New(histMin, histMax, histSigFigs)}
}

// Record adds one latency. Latencies past a minute count as a minute in
// the percentiles, and as themselves in the mean and maximum.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	v = max(v, 0)
	h.sum += v
	h.max = max(h.max, v)
	// The value is within the histogram's range, so it cannot fail.
	_ = h.h.RecordValue(min(v, histMax))
}

// Merge adds every latency recorded in o.
func (h *Histogram) Merge(o *Histogram) {
	h.h.Merge(o.h)
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count returns the number of latencies recorded.
func (h *Histogram) Count() int64 { return h.h.TotalCount() }

// Quantile returns the latency below which the fraction q (0 to 1) of the
// recorded latencies fall, to the histogram's precision; 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	// The histogram answers with the top of a bucket, which may lie above
	// the largest latency in it.
	return time.Duration(min(h.h.ValueAtQuantile(q*100), h.max))
}

// Max returns the largest latency recorded, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean returns the mean latency, exactly; 0 when empty.
func (h *Histogram) Mean() time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum / n)
}

// Latency summarizes the histogram in microseconds.
func (h *Histogram) Latency() Latency {
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()/100) / 10 }
	return Latency{
		P50:  us(h.Quantile(0.50)),
		P90:  us(h.Quantile(0.90)),
		P99:  us(h.Quantile(0.99)),
		P999: us(h.Quantile(0.999)),
		Max:  us(h.Max()),
		Mean: us(h.Mean()),
	}
}
