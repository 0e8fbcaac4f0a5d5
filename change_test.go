package pginvalidator

import (
	"sort"
	"testing"
)

func TestLSN(t *testing.T) {
	tests := []struct {
		lsn          LSN
		str, version string
	}{
		{0, "0/0", "0000000000000000"},
		{0x16B374D848, "16/B374D848", "00000016B374D848"},
		{0xFFFFFFFFFFFFFFFF, "FFFFFFFF/FFFFFFFF", "FFFFFFFFFFFFFFFF"},
	}
	for _, tt := range tests {
		if got := tt.lsn.String(); got != tt.str {
			t.Errorf("LSN(%#x).String() = %q, want %q", uint64(tt.lsn), got, tt.str)
		}
		if got := tt.lsn.VersionValue(); got != tt.version {
			t.Errorf("LSN(%#x).VersionValue() = %q, want %q", uint64(tt.lsn), got, tt.version)
		}
	}
}

// TestVersionValueOrder checks the promise applications rely on: comparing
// version values as strings compares the LSNs.
func TestVersionValueOrder(t *testing.T) {
	lsns := []LSN{0xA, 0x9, 0x10, 0xF, 0x1_0000_0000, 0xFFFF_FFFF, 0x16B374D848, 0xA0_0000_0000, 0x9F_FFFF_FFFF, 1}
	vals := make([]string, len(lsns))
	for i, l := range lsns {
		vals[i] = l.VersionValue()
	}
	sort.Slice(lsns, func(i, j int) bool { return lsns[i] < lsns[j] })
	sort.Strings(vals)
	for i, l := range lsns {
		if vals[i] != l.VersionValue() {
			t.Errorf("sorted as strings, position %d holds %s, want %s", i, vals[i], l.VersionValue())
		}
	}
}
