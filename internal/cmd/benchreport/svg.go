package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
)

// The charts are plain SVG written here: horizontal bars, one row per
// case, the value printed at the end of each bar, so a reader needs no axis.

const (
	chartWidth  = 760
	labelWidth  = 250 // left column holding the row labels
	valueWidth  = 130 // right margin holding the printed values
	barHeight   = 18
	rowGap      = 10
	titleHeight = 40
	fontFamily  = "system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"
)

var palette = []string{"#3b6fb6", "#e07b39", "#5a9e4b", "#a05195", "#c44e52", "#8c8c8c"}

// bar is one row of a bar chart.
type bar struct {
	Label string
	Value float64
	Text  string // printed after the bar; the value when empty
	Color int    // index into palette
}

// barChart draws one horizontal bar per row, scaled to the largest value.
func barChart(title string, bars []bar) []byte {
	height := titleHeight + len(bars)*(barHeight+rowGap) + rowGap
	var b bytes.Buffer
	svgOpen(&b, height)
	svgText(&b, 12, 24, "start", "bold", 15, title)
	maxV := 0.0
	for _, r := range bars {
		if finite(r.Value) {
			maxV = math.Max(maxV, r.Value)
		}
	}
	plot := float64(chartWidth - labelWidth - valueWidth)
	for i, r := range bars {
		y := titleHeight + i*(barHeight+rowGap)
		svgText(&b, labelWidth-8, y+barHeight-4, "end", "normal", 13, r.Label)
		w := 0.0
		if maxV > 0 && finite(r.Value) && r.Value > 0 {
			w = math.Max(1, plot*r.Value/maxV)
		}
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n",
			labelWidth, y, w, barHeight, palette[r.Color%len(palette)])
		text := r.Text
		if text == "" {
			text = formatCount(r.Value)
		}
		svgText(&b, int(float64(labelWidth)+w)+6, y+barHeight-4, "start", "normal", 12, text)
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// latencyGroup is one case of the latency chart.
type latencyGroup struct {
	Label    string
	P50, P99 float64 // microseconds
}

// latencyChart draws p50 and p99 as two bars per case, on one scale.
func latencyChart(title string, groups []latencyGroup) []byte {
	const legend = 22
	groupHeight := 2*barHeight + rowGap
	height := titleHeight + legend + len(groups)*groupHeight + rowGap
	var b bytes.Buffer
	svgOpen(&b, height)
	svgText(&b, 12, 24, "start", "bold", 15, title)
	for i, name := range []string{"p50", "p99"} {
		x := labelWidth + i*90
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="14" height="14" fill="%s"/>`+"\n", x, titleHeight-4, palette[i])
		svgText(&b, x+20, titleHeight+8, "start", "normal", 12, name)
	}
	maxV := 0.0
	for _, g := range groups {
		for _, v := range []float64{g.P50, g.P99} {
			if finite(v) {
				maxV = math.Max(maxV, v)
			}
		}
	}
	plot := float64(chartWidth - labelWidth - valueWidth)
	for i, g := range groups {
		y := titleHeight + legend + i*groupHeight
		svgText(&b, labelWidth-8, y+barHeight+4, "end", "normal", 13, g.Label)
		for j, v := range []float64{g.P50, g.P99} {
			w := 0.0
			if maxV > 0 && finite(v) && v > 0 {
				w = math.Max(1, plot*v/maxV)
			}
			by := y + j*barHeight
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n",
				labelWidth, by, w, barHeight-2, palette[j])
			svgText(&b, int(float64(labelWidth)+w)+6, by+barHeight-5, "start", "normal", 11, formatMicros(v))
		}
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func svgOpen(b *bytes.Buffer, height int) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="%s">`+"\n",
		chartWidth, height, chartWidth, height, fontFamily)
	fmt.Fprintf(b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", chartWidth, height)
}

func svgText(b *bytes.Buffer, x, y int, anchor, weight string, size int, s string) {
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="%s" font-weight="%s" font-size="%d" fill="#222222">`, x, y, anchor, weight, size)
	_ = xml.EscapeText(b, []byte(s))
	b.WriteString("</text>\n")
}
