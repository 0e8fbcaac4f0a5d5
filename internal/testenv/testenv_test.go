package testenv

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A backend asked for by name is used or Start fails; it never falls back to
// local binaries, which would make a CI log claim what did not run.
func TestNamedBackendNeverFallsBack(t *testing.T) {
	t.Setenv(EnvBackend, BackendTestcontainers)
	// A socket nothing listens on: no engine answers.
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "nothing.sock"))
	t.Setenv("DATABASE_URL", "")
	t.Setenv("REDIS_URL", "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env, err := Start(ctx)
	if err == nil {
		env.Close()
		t.Fatalf("Start with %s=%s and no engine returned a %s backend, want an error", EnvBackend, BackendTestcontainers, env.Backend)
	}
	if !errors.Is(err, errNoDocker) {
		t.Errorf("error %q does not say that no Docker engine answers", err)
	}
}

func TestBackendErrors(t *testing.T) {
	tests := []struct {
		backend, databaseURL, redisURL string
		want                           string
	}{
		{"containers", "", "", `PGINV_TEST_BACKEND="containers": want env, testcontainers or local (or leave it unset to pick the first that works)`},
		{"env", "postgres://u@127.0.0.1:1/db", "", "PGINV_TEST_BACKEND=env needs both DATABASE_URL and REDIS_URL set"},
		{"env", "", "redis://127.0.0.1:1/0", "PGINV_TEST_BACKEND=env needs both DATABASE_URL and REDIS_URL set"},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			t.Setenv(EnvBackend, tt.backend)
			t.Setenv("DATABASE_URL", tt.databaseURL)
			t.Setenv("REDIS_URL", tt.redisURL)
			env, err := Start(context.Background())
			if err == nil {
				env.Close()
				t.Fatalf("Start returned a %s backend, want error %q", env.Backend, tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got error %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEnvBackend(t *testing.T) {
	t.Setenv(EnvBackend, BackendEnv)
	t.Setenv("DATABASE_URL", "postgres://app:secret@db.internal:5432/app")
	t.Setenv("REDIS_URL", "redis://:hunter2@cache.internal:6379/0")
	env, err := Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if env.Backend != BackendEnv || env.PostgresURL != "postgres://app:secret@db.internal:5432/app" || env.RedisURL != "redis://:hunter2@cache.internal:6379/0" {
		t.Errorf("got backend %q, %q, %q", env.Backend, env.PostgresURL, env.RedisURL)
	}
	want := "postgres=postgres://app:REDACTED@db.internal:5432/app redis=redis://:REDACTED@cache.internal:6379/0"
	if env.Summary != want {
		t.Errorf("summary %q, want %q (no password)", env.Summary, want)
	}
	if strings.Contains(env.Summary, "secret") || strings.Contains(env.Summary, "hunter2") {
		t.Error("the summary shows a password")
	}
}

func TestHostPort(t *testing.T) {
	tests := []struct{ url, want string }{
		{"postgres://postgres:postgres@localhost:32768/postgres?sslmode=disable", "localhost:32768"},
		{"postgres://postgres@127.0.0.1:5999/postgres?sslmode=disable", "127.0.0.1:5999"},
		{"redis://localhost:32769", "localhost:32769"},
	}
	for _, tt := range tests {
		if got := hostPort(tt.url); got != tt.want {
			t.Errorf("hostPort(%q) = %q, want %q", tt.url, got, tt.want)
		}
	}
}
