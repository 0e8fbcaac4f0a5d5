package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// TestSecretsNeverPrinted runs check, setup and run through the binary with
// every secret-bearing PostgreSQL connection setting, in every shape (each secret
// holds the word "Secret", which nothing else prints), against servers
// that are down (nothing listens on the port): each must fail or retry with
// the error on stderr, and no secret may appear there. Redis URLs are
// TestPasswordsNeverPrinted's.
func TestSecretsNeverPrinted(t *testing.T) {
	port, err := localsvc.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	down := "127.0.0.1:" + strconv.Itoa(port)
	rules := filepath.Join(t.TempDir(), "rules.toml")
	if err := os.WriteFile(rules, []byte("[[rule]]\ntable = \"items\"\ndel = [\"item:<id>\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pgDown := "host=127.0.0.1 port=" + strconv.Itoa(port)
	tests := []struct {
		name     string
		postgres string // --postgres
		env      string // DATABASE_URL, when postgres is empty
	}{
		{"url user info", "postgres://app:Secret-Userinfo-1@" + down + "/app", ""},
		{"url password parameter", "postgres://app@" + down + "/app?password=Secret-Query-2", ""},
		{"url sslpassword", "postgres://app@" + down + "/app?sslmode=require&sslpassword=Secret-SSLKey-3", ""},
		{"url sslpassword, percent-encoded", "postgres://app@" + down + "/app?sslmode=require&sslpassword=Secret%2DSSLKey%2D4", ""},
		{"url with a bad port", "postgres://app:Secret-BadPort-5@127.0.0.1:notaport/app?sslpassword=Secret-BadPort-6", ""},
		{"keyword password", pgDown + " user=app password=Secret-Keyword-7", ""},
		{"keyword sslpassword", pgDown + " user=app sslmode=require sslpassword=Secret-Keyword-8", ""},
		{"keyword sslpassword, quoted", pgDown + " user=app sslmode=require sslpassword='Secret Keyword 9'", ""},
		{"DATABASE_URL sslpassword", "", "postgres://app:Secret-Env-10@" + down + "/app?sslmode=require&sslpassword=Secret-Env-11"},
	}
	for _, cmd := range []string{"check", "setup", "run"} {
		for _, tt := range tests {
			t.Run(cmd+" "+tt.name, func(t *testing.T) {
				t.Parallel()
				args := []string{cmd, "--config", rules}
				if tt.postgres != "" {
					args = append(args, "--postgres", tt.postgres)
				}
				if cmd == "run" {
					args = append(args, "--redis", "redis://"+down+"/0")
				}
				out := runDown(t, args, tt.env)
				if strings.Contains(out, "Secret") { // every secret has it, and nothing else
					t.Fatalf("%s printed a secret:\n%s", cmd, out)
				}
				if !strings.Contains(out, "REDACTED") {
					t.Errorf("%s did not print the connection string, redacted; is the test still testing?\n%s", cmd, out)
				}
			})
		}
	}
}

// runDown runs the binary with args (and DATABASE_URL=env when env is not
// empty) against servers that are down, and returns its output: for check
// and setup once they exit with an error, for run once it logged a retry
// (or exited with an error).
func runDown(t *testing.T, args []string, env string) string {
	t.Helper()
	cmd := exec.Command(daemonBinary(t), args...)
	cmd.Env = os.Environ()
	if env != "" {
		cmd.Env = append(cmd.Env, "DATABASE_URL="+env)
	}
	var out testenv.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if args[0] != "run" {
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("%v succeeded with the server down:\n%s", args, out.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%v still running after 30s:\n%s", args, out.String())
		}
		return out.String()
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "retrying") {
		select {
		case err := <-done: // a connection string it cannot parse stops it
			if err == nil {
				t.Fatalf("%v exited without an error:\n%s", args, out.String())
			}
			return out.String()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("run logged no retry within 30s:\n%s", out.String())
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	<-done
	return out.String()
}
