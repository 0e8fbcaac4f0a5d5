package main

import (
	"math"
	"testing"
)

func TestHistogram(t *testing.T) {
	m := map[string]float64{
		`h_bucket{le="0.001"}`: 10,
		`h_bucket{le="0.01"}`:  98,
		`h_bucket{le="0.1"}`:   100,
		`h_bucket{le="+Inf"}`:  100,
		"h_sum":                0.5,
		"h_count":              100,
	}
	mean, p99 := histogram(m, "h")
	if mean != 5 || p99 != 100 {
		t.Errorf("histogram = %v ms mean, p99 ≤ %v ms; want 5 and 100", mean, p99)
	}
	if mean, p99 := histogram(map[string]float64{}, "h"); mean != 0 || p99 != 0 {
		t.Errorf("empty histogram = %v, %v; want zeros", mean, p99)
	}
	m[`h_bucket{le="0.1"}`] = 98
	if _, p99 := histogram(m, "h"); !math.IsInf(p99, 1) {
		t.Errorf("p99 beyond the last finite bucket = %v, want +Inf", p99)
	}
}
