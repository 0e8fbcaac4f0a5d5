package main

import (
	"slices"
	"testing"
)

func TestMedian(t *testing.T) {
	runs := []Run{
		{Seconds: 5.17, PeakRSSKB: 100},
		{Seconds: 3.88, PeakRSSKB: 300},
		{Seconds: 4.19, PeakRSSKB: 200},
	}
	m := median(runs)
	if m.Seconds != 4.19 {
		t.Errorf("median of 5.17, 3.88, 4.19: got %.2f s, want 4.19", m.Seconds)
	}
	if m.PeakRSSKB != 300 {
		t.Errorf("peak RSS: got %d KB, want the worst run's 300", m.PeakRSSKB)
	}
	if want := []float64{5.17, 3.88, 4.19}; !slices.Equal(m.AllSeconds, want) {
		t.Errorf("AllSeconds: got %v, want %v in run order", m.AllSeconds, want)
	}

	one := median([]Run{{Seconds: 2, PeakRSSKB: 7}})
	if one.Seconds != 2 || one.AllSeconds != nil {
		t.Errorf("one run: got %+v, want its time and no AllSeconds", one)
	}

	// An even count takes the faster of the two middle runs, a run that happened.
	if got := median([]Run{{Seconds: 4}, {Seconds: 1}, {Seconds: 3}, {Seconds: 2}}).Seconds; got != 2 {
		t.Errorf("median of 4 runs: got %v, want 2", got)
	}
}
