package localsvc

import "testing"

func TestVersionOf(t *testing.T) {
	tests := []struct {
		binDir string
		want   int
	}{
		{"/usr/lib/postgresql/15/bin", 15},
		{"/opt/homebrew/opt/postgresql@16/bin", 16},
		{"/Applications/Postgres.app/Contents/Versions/17/bin", 17},
		{"/Applications/Postgres.app/Contents/Versions/latest/bin", 0},
		{"/usr/bin", 0},
	}
	for _, tt := range tests {
		if got := versionOf(tt.binDir); got != tt.want {
			t.Errorf("versionOf(%q) = %d, want %d", tt.binDir, got, tt.want)
		}
	}
}
