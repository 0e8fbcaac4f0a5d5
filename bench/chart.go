package main

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// The chart is plain SVG text: catch-up times relative to decoding on top,
// the stale window distributions (CDF) below.

var colors = map[string]string{
	cDecode:      "#8c8c8c",
	cRecvlogical: "#7fa7c9",
	cBaseline:    "#e08a2c",
	cDaemon:      "#1f5f9e",
	// the daemon against a Redis Cluster
	cDaemonCluster: "#5b3f8c",
	// over the Unix socket: lighter shades of the same hues
	cRecvlogicalUnix:   "#b4cde2",
	cDaemonUnix:        "#4f8fcf",
	cDaemonRedisUnix:   "#86b5e3",
	cDaemonClusterUnix: "#9479c2",
	cAlt:               "#2e8b57",
	cAltUnix:           "#6cc08f",
}

const (
	chartW   = 1000
	marginL  = 150
	marginR  = 40
	barH     = 18
	barGap   = 6
	groupGap = 26
)

type svg struct{ b strings.Builder }

func (s *svg) f(format string, args ...any) { fmt.Fprintf(&s.b, format+"\n", args...) }

func (s *svg) text(x, y float64, anchor, style, body string) {
	s.f(`<text x="%.1f" y="%.1f" text-anchor="%s" %s>%s</text>`, x, y, anchor, style, html.EscapeString(body))
}

// logScale maps [lo, hi] onto [x0, x1] logarithmically.
func logScale(lo, hi, x0, x1 float64) func(float64) float64 {
	l0, l1 := math.Log10(lo), math.Log10(hi)
	return func(v float64) float64 {
		v = math.Max(lo, math.Min(hi, v))
		return x0 + (math.Log10(v)-l0)/(l1-l0)*(x1-x0)
	}
}

// logTicks returns 1, 2, 5 × powers of ten within [lo, hi].
func logTicks(lo, hi float64) []float64 {
	var ts []float64
	for p := math.Floor(math.Log10(lo)); p <= math.Ceil(math.Log10(hi)); p++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, p)
			if v >= lo*0.999 && v <= hi*1.001 {
				ts = append(ts, v)
			}
		}
	}
	return ts
}

func tickLabel(v float64) string {
	if v >= 1 {
		return fmt.Sprintf("%g", v)
	}
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
}

func chartSVG(r *Results) string {
	s := &svg{}
	// Heights of the two panels.
	catchH := 0.0
	if len(r.CatchUp) > 0 {
		catchH = 70 + catchUpBarsH(r) + 40
	}
	staleH := 0.0
	if len(r.Stale) > 0 {
		staleH = 380
	}
	tpH := 0.0
	if len(r.Throughput) > 0 {
		tpH = 330
	}
	h := 50 + catchH + staleH + tpH
	s.f(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="Helvetica, Arial, sans-serif" font-size="12">`, chartW, h, chartW, h)
	s.f(`<rect width="100%%" height="100%%" fill="white"/>`)
	s.text(chartW/2, 24, "middle", `font-size="16" font-weight="bold"`, "pg-invalidator benchmarks, "+r.Date[:10])
	s.text(chartW/2, 42, "middle", `fill="#555"`, fmt.Sprintf("%d × %s; %s; Redis %s",
		r.Machine.Nproc, r.Machine.CPU, shortPG(r.Machine.Postgres), r.Machine.Redis))
	y := 50.0
	if len(r.CatchUp) > 0 {
		catchUpPanel(s, r, y)
		y += catchH
	}
	if len(r.Stale) > 0 {
		stalePanel(s, r, y)
		y += staleH
	}
	if len(r.Throughput) > 0 {
		throughputPanel(s, r, y)
	}
	s.f(`</svg>`)
	return s.b.String()
}

// catchUpBarsH is the height of the catch-up bars: one per run, a gap
// after each scenario.
func catchUpBarsH(r *Results) float64 {
	h := 0.0
	for _, sc := range r.CatchUp {
		h += float64(len(sc.Runs))*(barH+barGap) + groupGap
	}
	return h
}

func shortPG(v string) string {
	f := strings.Fields(v)
	if len(f) >= 2 {
		return f[0] + " " + f[1]
	}
	return v
}

func catchUpPanel(s *svg, r *Results, y0 float64) {
	s.text(20, y0+24, "start", `font-size="14" font-weight="bold"`, "Catch-up: time to drain the backlog, relative to the server's own decoding (log scale)")
	hi := 2.5
	for _, sc := range r.CatchUp {
		for _, x := range sc.Runs {
			hi = math.Max(hi, x.Ratio*1.6)
		}
	}
	lo := 0.5
	for _, sc := range r.CatchUp {
		for _, x := range sc.Runs {
			lo = math.Min(lo, x.Ratio/1.5)
		}
	}
	x0, x1 := float64(marginL), float64(chartW-marginR-210)
	sx := logScale(lo, hi, x0, x1)
	top := y0 + 44
	bottom := top + catchUpBarsH(r)
	for _, t := range logTicks(lo, hi) {
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`, sx(t), top, sx(t), bottom)
		s.text(sx(t), bottom+14, "middle", `fill="#555"`, tickLabel(t)+"×")
	}
	s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#c0392b" stroke-dasharray="5,4"/>`, sx(3), top-6, sx(3), bottom)
	s.text(sx(3)+4, top-8, "start", `fill="#c0392b"`, "target 3× (small transactions, TCP)")
	y := top
	for _, sc := range r.CatchUp {
		label := map[string]string{"small": "small transactions", "large": "one large transaction"}[sc.Scenario]
		if label == "" {
			label = sc.Scenario
		}
		s.text(20, y+12, "start", `font-weight="bold"`, label)
		y += 16
		for _, x := range sc.Runs {
			s.text(x0-10, y+barH-5, "end", "", x.Contender)
			s.f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s"/>`, x0, y, math.Max(1, sx(x.Ratio)-x0), barH, colors[x.Contender])
			note := fmt.Sprintf("%.2f s  (%.2f×)", x.Seconds, x.Ratio)
			if x.PeakRSSKB > 0 {
				note += fmt.Sprintf("  RSS %.1f MB", float64(x.PeakRSSKB)/1024)
			}
			s.text(sx(x.Ratio)+6, y+barH-5, "start", "", note)
			y += barH + barGap
		}
		y += groupGap - 16
	}
}

func stalePanel(s *svg, r *Results, y0 float64) {
	s.text(20, y0+24, "start", `font-size="14" font-weight="bold"`, "Stale window: from COMMIT returning until the key is gone from Redis (CDF, tail stretched)")
	lo, hi := math.Inf(1), 0.0
	for _, st := range r.Stale {
		for _, d := range st.Stats {
			for _, v := range d.Samples {
				v = math.Abs(v)
				if v > 0 {
					lo = math.Min(lo, v)
				}
				hi = math.Max(hi, v)
			}
		}
	}
	if hi == 0 {
		return
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	x0, x1 := float64(marginL), float64(chartW-marginR-210)
	top, bottom := y0+50, y0+330
	sx := logScale(lo, hi, x0, x1)
	// The y axis stretches the tail: equal steps for 0, 90, 99 and 99.9 %.
	sy := func(p float64) float64 {
		return bottom - -math.Log10(1-math.Min(p, 0.999))/3*(bottom-top)
	}
	for _, t := range logTicks(lo, hi) {
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`, sx(t), top, sx(t), bottom)
		s.text(sx(t), bottom+14, "middle", `fill="#555"`, tickLabel(t))
	}
	s.text((x0+x1)/2, bottom+32, "middle", `fill="#555"`, "milliseconds")
	for _, p := range []float64{0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999} {
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`, x0, sy(p), x1, sy(p))
		s.text(x0-6, sy(p)+4, "end", `fill="#555"`, fmt.Sprintf("p%g", p*100))
	}
	s.f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#999"/>`, x0, top, x1-x0, bottom-top)
	ly := top + 6
	for _, st := range r.Stale {
		dash := ""
		if strings.HasPrefix(st.Condition, "load") {
			dash = ` stroke-dasharray="6,4"`
		}
		if strings.HasSuffix(st.Condition, "(unix)") {
			dash += ` stroke-opacity="0.5"`
		}
		for _, d := range st.Stats {
			vals := make([]float64, len(d.Samples))
			for i, v := range d.Samples {
				vals[i] = math.Max(lo, math.Abs(v))
			}
			slices.Sort(vals)
			var pts []string
			for i, v := range vals {
				// A step: the fraction before this value, then after it.
				pts = append(pts, fmt.Sprintf("%.1f,%.1f %.1f,%.1f", sx(v), sy(float64(i)/float64(len(vals))), sx(v), sy(float64(i+1)/float64(len(vals)))))
			}
			s.f(`<polyline fill="none" stroke="%s" stroke-width="1.6"%s points="%s"/>`, colors[d.Contender], dash, strings.Join(pts, " "))
			cond := st.Condition
			if st.LoadTPS > 0 {
				cond = fmt.Sprintf("load %.0f tx/s", st.LoadTPS)
			}
			s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`, x1+12, ly, x1+40, ly, colors[d.Contender], dash)
			s.text(x1+46, ly+4, "start", "", fmt.Sprintf("%s, %s", d.Contender, cond))
			s.text(x1+46, ly+18, "start", `fill="#555" font-size="11"`, fmt.Sprintf("p50 %.2f  p99 %.2f  max %.1f", d.P50, d.P99, d.Max))
			ly += 40
		}
	}
}

// throughputPanel draws, for each pgbench rate achieved, the daemon's
// median and maximum lag (MB, left) and the stale window p99 measured
// meanwhile (ms, right), both on log scales.
func throughputPanel(s *svg, r *Results, y0 float64) {
	s.text(20, y0+24, "start", `font-size="14" font-weight="bold"`, "Throughput: pgbench single-row UPDATEs, the daemon live: lag and stale window p99 by rate achieved")
	x0, x1 := float64(marginL), float64(chartW-marginR-210)
	top, bottom := y0+50, y0+280
	loR, hiR := math.Inf(1), 0.0
	loL, hiL := math.Inf(1), 0.0
	loP, hiP := math.Inf(1), 0.0
	for _, t := range r.Throughput {
		loR, hiR = math.Min(loR, t.AchievedTPS), math.Max(hiR, t.AchievedTPS)
		for _, v := range []float64{t.LagBytesP50, t.LagBytesMax, t.RecvlogicalSentLagMax} {
			if v > 0 {
				loL, hiL = math.Min(loL, v/1e6), math.Max(hiL, v/1e6)
			}
		}
		if t.Stale.P99 > 0 {
			loP, hiP = math.Min(loP, t.Stale.P99), math.Max(hiP, t.Stale.P99)
		}
	}
	if hiR == 0 || hiL == 0 {
		return
	}
	decade := func(lo, hi float64) (float64, float64) {
		return math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi*1.0001)))
	}
	loR, hiR = decade(loR, hiR)
	loL, hiL = decade(loL, hiL)
	loP, hiP = decade(math.Min(loP, 50), math.Max(hiP, 50))
	sx := logScale(loR, hiR, x0, x1)
	flip := func(f func(float64) float64) func(float64) float64 {
		return func(v float64) float64 { return bottom - (f(v) - top) }
	}
	syL := flip(logScale(loL, hiL, top, bottom))
	syP := flip(logScale(loP, hiP, top, bottom))
	s.f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#999"/>`, x0, top, x1-x0, bottom-top)
	for _, t := range logTicks(loR, hiR) {
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`, sx(t), top, sx(t), bottom)
		s.text(sx(t), bottom+14, "middle", `fill="#555"`, tickLabel(t))
	}
	s.text((x0+x1)/2, bottom+32, "middle", `fill="#555"`, "transactions per second achieved")
	for _, t := range logTicks(loL, hiL) {
		s.text(x0-6, syL(t)+4, "end", `fill="#1f5f9e"`, tickLabel(t)+" MB")
	}
	for _, t := range logTicks(loP, hiP) {
		s.text(x1+6, syP(t)+4, "start", `fill="#c0392b"`, tickLabel(t)+" ms")
	}
	s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#c0392b" stroke-dasharray="5,4"/>`, x0, syP(50), x1, syP(50))
	s.text(x1-4, syP(50)-4, "end", `fill="#c0392b"`, "target p99 50 ms")
	line := func(color, dash string, pts [][2]float64) {
		var ps []string
		for _, p := range pts {
			ps = append(ps, fmt.Sprintf("%.1f,%.1f", p[0], p[1]))
			s.f(`<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`, p[0], p[1], color)
		}
		s.f(`<polyline fill="none" stroke="%s" stroke-width="1.6"%s points="%s"/>`, color, dash, strings.Join(ps, " "))
	}
	var p50, pmax, rmax, p99 [][2]float64
	for _, t := range r.Throughput {
		x := sx(math.Max(t.AchievedTPS, loR))
		if t.LagBytesP50 > 0 {
			p50 = append(p50, [2]float64{x, syL(math.Max(t.LagBytesP50/1e6, loL))})
		}
		if t.LagBytesMax > 0 {
			pmax = append(pmax, [2]float64{x, syL(math.Max(t.LagBytesMax/1e6, loL))})
		}
		if t.RecvlogicalSentLagMax > 0 && t.RecvlogicalTPS > 0 {
			rmax = append(rmax, [2]float64{sx(math.Max(t.RecvlogicalTPS, loR)), syL(math.Max(t.RecvlogicalSentLagMax/1e6, loL))})
		}
		if t.Stale.P99 > 0 {
			p99 = append(p99, [2]float64{x, syP(t.Stale.P99)})
		}
	}
	line(colors[cDaemon], "", p50)
	line(colors[cDaemon], ` stroke-dasharray="6,4"`, pmax)
	line(colors[cRecvlogical], ` stroke-dasharray="2,3"`, rmax)
	line("#c0392b", "", p99)
	ly := top + 6
	for _, l := range []struct{ color, dash, text string }{
		{colors[cDaemon], "", "daemon lag p50 (MB)"},
		{colors[cDaemon], "6,4", "daemon lag max (MB)"},
		{colors[cRecvlogical], "2,3", "pg_recvlogical sent lag max (MB)"},
		{"#c0392b", "", "stale window p99 (ms)"},
	} {
		dash := ""
		if l.dash != "" {
			dash = fmt.Sprintf(` stroke-dasharray="%s"`, l.dash)
		}
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`, x1+60, ly, x1+84, ly, l.color, dash)
		s.text(x1+90, ly+4, "start", "", l.text)
		ly += 18
	}
}
