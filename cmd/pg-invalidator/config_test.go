package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestDaemonConfigTargets(t *testing.T) {
	const rules = `
[[rule]]
table = "items"
del = ["item:<id>"]
`
	write := func(t *testing.T, toml string) string {
		t.Helper()
		path := filepath.Join(t.TempDir(), "rules.toml")
		if err := os.WriteFile(path, []byte(toml+rules), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	t.Setenv("DATABASE_URL", "postgres://localhost/app")
	t.Setenv("REDIS_URL", "redis://from-env:6379/0")
	t.Setenv("PGINV_TEST_US_PASSWORD", "s3cret")

	// [redis] takes --redis (or REDIS_URL); each [[target]] its own url and password.
	c := commonFlags{config: write(t, `
[redis]

[[target]]
name = "us"
url = "redis://us:6379/0"
password_env = "PGINV_TEST_US_PASSWORD"
`), redis: "redis://from-flag:6379/0"}
	cfg, err := c.daemonConfig(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tg := range cfg.Targets {
		got = append(got, fmt.Sprintf("%s %s %s", tg.Name, tg.Redis.URL, tg.Redis.Password))
	}
	if want := "[default redis://from-flag:6379/0  us redis://us:6379/0 s3cret]"; fmt.Sprint(got) != want {
		t.Errorf("Targets = %v, want %s", got, want)
	}

	// Without [redis], REDIS_URL is ignored and --redis is an error.
	path := write(t, `
[[target]]
name = "us"
url = "redis://us:6379/0"
`)
	c = commonFlags{config: path}
	if cfg, err = c.daemonConfig(nil, true); err != nil || len(cfg.Targets) != 1 || cfg.Targets[0].Name != "us" || cfg.Targets[0].Redis.URL != "redis://us:6379/0" {
		t.Errorf("daemonConfig without [redis] = %+v, %v; want the target us alone, with its own url", cfg.Targets, err)
	}
	c.redis = "redis://from-flag:6379/0"
	_, err = c.daemonConfig(nil, true)
	if want := "--redis: " + path + " has [[target]] tables and no [redis] table; give each target its url in the file, or add a [redis] table"; fmt.Sprint(err) != want {
		t.Errorf("daemonConfig with --redis and no [redis] = %v, want %s", err, want)
	}
}

// TestDaemonConfigRedisURL checks where the default target's URL comes
// from: --redis, then REDIS_URL, then [redis] url.
func TestDaemonConfigRedisURL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.toml")
	if err := os.WriteFile(path, []byte("[redis]\nurl = \"redis://from-file:6379/0\"\n\n[[rule]]\ntable = \"items\"\ndel = [\"item:<id>\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DATABASE_URL", "postgres://localhost/app")
	tests := []struct{ flag, env, want string }{
		{"redis://from-flag:6379/0", "redis://from-env:6379/0", "redis://from-flag:6379/0"},
		{"", "redis://from-env:6379/0", "redis://from-env:6379/0"},
		{"", "", "redis://from-file:6379/0"},
	}
	for _, tt := range tests {
		t.Setenv("REDIS_URL", tt.env)
		c := commonFlags{config: path, redis: tt.flag}
		cfg, err := c.daemonConfig(nil, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.Targets) != 1 || cfg.Targets[0].Name != "default" || cfg.Targets[0].Redis.URL != tt.want {
			t.Errorf("--redis %q, REDIS_URL %q: Targets = %+v, want the default target alone at %s", tt.flag, tt.env, cfg.Targets, tt.want)
		}
	}
}
