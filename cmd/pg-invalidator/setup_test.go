package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
)

// TestSetupDefaultRoleIsNotReserved: PostgreSQL refuses to create a role whose
// name starts with pg_ ("role name ... is reserved", SQLSTATE 42939), so the
// default --role must not, or setup --apply fails on a fresh server.
func TestSetupDefaultRoleIsNotReserved(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), []string{"setup", "--help"}, &out, &errOut); code != 0 {
		t.Fatalf("setup --help exited %d:\n%s", code, errOut.String())
	}
	m := regexp.MustCompile(`-role string\n.*\(default "([^"]*)"\)`).FindStringSubmatch(errOut.String())
	if m == nil {
		t.Fatalf("setup --help shows no default for --role:\n%s", errOut.String())
	}
	if strings.HasPrefix(m[1], "pg_") {
		t.Errorf("setup --role defaults to %q, a name PostgreSQL reserves; CREATE ROLE would fail", m[1])
	}
}
