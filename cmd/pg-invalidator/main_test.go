package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
)

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"help"}, {"run", "--help"}, {"check", "--help"}, {"demo", "--help"}, {"version"},
	} {
		var out, errOut bytes.Buffer
		if code := Main(context.Background(), args, &out, &errOut); code != 0 {
			t.Errorf("%v exited %d, want 0; stderr:\n%s", args, code, errOut.String())
		}
		if out.Len()+errOut.Len() == 0 {
			t.Errorf("%v printed nothing", args)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "Usage:"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"run", "--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{[]string{"check", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if code := Main(context.Background(), tt.args, &out, &errOut); code != 2 {
			t.Errorf("%v exited %d, want 2", tt.args, code)
		}
		if !strings.Contains(errOut.String(), tt.want) {
			t.Errorf("%v: stderr lacks %q:\n%s", tt.args, tt.want, errOut.String())
		}
	}
}

func TestMissingConfigFile(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main(context.Background(), []string{"check", "--config", "does-not-exist.toml"}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "does-not-exist.toml") {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 naming the file", code, errOut.String())
	}
}

// The daemon must not link the test-only container library.
func TestBinaryDoesNotLinkTestcontainers(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "testcontainers") {
		t.Fatal("cmd/pg-invalidator depends on testcontainers")
	}
}
