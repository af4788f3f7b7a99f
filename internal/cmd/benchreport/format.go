package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// goal is the ratio a comparison aims for: at least Value (or at most, for
// costs such as memory). The zero goal means the comparison has none.
type goal struct {
	AtMost bool    `json:"at_most,omitempty"`
	Value  float64 `json:"value,omitempty"`
}

func atLeast(v float64) goal { return goal{Value: v} }
func atMost(v float64) goal  { return goal{AtMost: true, Value: v} }

func (g goal) set() bool { return g.Value > 0 }

// String renders the goal as "≥ 0.5x" or "≤ 1.5x", or "" for none.
func (g goal) String() string {
	if !g.set() {
		return ""
	}
	op := "≥"
	if g.AtMost {
		op = "≤"
	}
	return op + " " + strconv.FormatFloat(g.Value, 'f', -1, 64) + "x"
}

// verdict says whether ratio r meets the goal: "pass", "miss", "" without a
// goal, and "n/a" when the ratio could not be measured.
func (g goal) verdict(r float64) string {
	switch {
	case !g.set():
		return ""
	case !finite(r):
		return "n/a"
	case g.AtMost && r <= g.Value, !g.AtMost && r >= g.Value:
		return "pass"
	default:
		return "miss"
	}
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// ratio is a/b, NaN when b is not positive.
func ratio(a, b float64) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return a / b
}

// formatRatio renders a ratio as "0.62x", or "n/a".
func formatRatio(r float64) string {
	if !finite(r) {
		return "n/a"
	}
	return strconv.FormatFloat(r, 'f', 2, 64) + "x"
}

// formatCount renders n with thousands separators: 1234567 -> "1,234,567".
func formatCount(n float64) string {
	if !finite(n) {
		return "n/a"
	}
	s := strconv.FormatInt(int64(math.Round(n)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// formatMicros renders a latency given in microseconds: "87 µs", "1.25 ms".
func formatMicros(us float64) string {
	switch {
	case !finite(us):
		return "n/a"
	case us < 10:
		return strconv.FormatFloat(us, 'f', 1, 64) + " µs"
	case us < 1000:
		return strconv.FormatFloat(us, 'f', 0, 64) + " µs"
	case us < 1e6:
		return strconv.FormatFloat(us/1000, 'f', 2, 64) + " ms"
	default:
		return strconv.FormatFloat(us/1e6, 'f', 2, 64) + " s"
	}
}

// formatBytes renders a byte count in binary units: "512 B", "1.5 MiB".
func formatBytes(n float64) string {
	if !finite(n) {
		return "n/a"
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for math.Abs(n) >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", n, units[i])
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}
