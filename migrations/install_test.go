package migrations

import "testing"

func TestUninstallSQL(t *testing.T) {
	tests := []struct {
		tables []string
		want   string
	}{
		{nil, ""},
		{Tables, `DROP TABLE IF EXISTS "public"."products", "public"."categories"`},
	}
	for _, tt := range tests {
		if got := UninstallSQL(tt.tables); got != tt.want {
			t.Errorf("UninstallSQL(%v) = %q, want %q", tt.tables, got, tt.want)
		}
	}
}
