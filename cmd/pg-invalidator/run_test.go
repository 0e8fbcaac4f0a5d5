package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestRunReadyWindowErrors checks that run refuses a --ready-window it cannot
// use before it loads the rules or connects to anything.
func TestRunReadyWindowErrors(t *testing.T) {
	tests := []struct {
		value    string
		wantCode int
		want     string
	}{
		{"soon", 2, `invalid value "soon" for flag -ready-window`},
		{"0s", 1, "pg-invalidator: --ready-window 0s: want a duration of at least 1s, such as 30s"},
		{"-5s", 1, "pg-invalidator: --ready-window -5s: want a duration of at least 1s, such as 30s"},
		{"500ms", 1, "pg-invalidator: --ready-window 500ms: want a duration of at least 1s, such as 30s"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			var out, errOut bytes.Buffer
			args := []string{"run", "--config", "does-not-exist.toml", "--ready-window", tt.value}
			if code := Main(context.Background(), args, &out, &errOut); code != tt.wantCode {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.wantCode, errOut.String())
			}
			if got := errOut.String(); !strings.Contains(got, tt.want) {
				t.Errorf("stderr lacks %q:\n%s", tt.want, got)
			}
		})
	}
}
