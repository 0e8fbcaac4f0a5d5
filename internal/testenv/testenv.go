// Package testenv gives tests a real PostgreSQL (wal_level=logical) and a real
// Redis, shared by every test of a package. It is imported only by _test.go
// files, so the daemon binary never links testcontainers.
//
// PGINV_TEST_BACKEND chooses where the servers come from:
//
//   - env: DATABASE_URL and REDIS_URL, which must both be set.
//   - testcontainers: containers started through testcontainers-go on the
//     Docker engine that DOCKER_HOST (or the default socket) names; see
//     containers.go for the images and how they are started.
//   - local: the local binaries (/usr/lib/postgresql/*/bin and redis-server),
//     started by package localsvc on free loopback ports.
//   - unset: env when both URLs are set, else testcontainers when a Docker
//     engine answers, else local.
//
// A backend that was asked for by name is used or the tests fail: it never
// falls back to another. Main prints one line per package saying which
// backend and images it used ("testenv: backend=testcontainers image=..."),
// so that a test log shows what it ran against.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// The backends PGINV_TEST_BACKEND names.
const (
	BackendEnv            = "env"
	BackendTestcontainers = "testcontainers"
	BackendLocal          = "local"
)

// EnvBackend is the environment variable that chooses the backend.
const EnvBackend = "PGINV_TEST_BACKEND"

// Env is a running PostgreSQL and Redis.
type Env struct {
	PostgresURL string
	RedisURL    string
	// Backend is BackendEnv, BackendTestcontainers or BackendLocal.
	Backend string
	// Summary describes the servers in one line without passwords, after
	// "backend=...": images, how they were started, addresses.
	Summary string

	// Postgres and Redis are set only for the local backend. Tests that
	// stop, kill or restart a server start their own with package localsvc,
	// whatever the backend.
	Postgres *localsvc.Postgres
	Redis    *localsvc.Redis

	closers []func()
}

// Close stops whatever Start started.
func (e *Env) Close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

// Start finds or starts a PostgreSQL and a Redis, on the backend that
// PGINV_TEST_BACKEND names (see the package comment).
func Start(ctx context.Context) (*Env, error) {
	switch b := os.Getenv(EnvBackend); b {
	case BackendEnv:
		return startEnv()
	case BackendTestcontainers:
		return startContainers(ctx)
	case BackendLocal:
		return startLocal(ctx)
	case "":
		if os.Getenv("DATABASE_URL") != "" && os.Getenv("REDIS_URL") != "" {
			return startEnv()
		}
		env, err := startContainers(ctx)
		if err == nil || !errors.Is(err, errNoDocker) {
			return env, err
		}
		return startLocal(ctx)
	default:
		return nil, fmt.Errorf("%s=%q: want %s, %s or %s (or leave it unset to pick the first that works)",
			EnvBackend, b, BackendEnv, BackendTestcontainers, BackendLocal)
	}
}

func startEnv() (*Env, error) {
	pg, rd := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if pg == "" || rd == "" {
		return nil, fmt.Errorf("%s=%s needs both DATABASE_URL and REDIS_URL set", EnvBackend, BackendEnv)
	}
	return &Env{
		PostgresURL: pg, RedisURL: rd, Backend: BackendEnv,
		Summary: fmt.Sprintf("postgres=%s redis=%s", Redact(pg), Redact(rd)),
	}, nil
}

func startLocal(ctx context.Context) (*Env, error) {
	env := &Env{Backend: BackendLocal}
	pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{})
	if err != nil {
		return nil, fmt.Errorf("start a local PostgreSQL: %w", err)
	}
	env.Postgres, env.PostgresURL = pg, pg.URL()
	env.closers = append(env.closers, func() { pg.Close() })
	rd, err := localsvc.StartRedis(ctx)
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("start a local Redis: %w", err)
	}
	env.Redis, env.RedisURL = rd, rd.URL()
	env.closers = append(env.closers, func() { rd.Close() })
	env.Summary = fmt.Sprintf("postgres=127.0.0.1:%d redis=127.0.0.1:%d", pg.Port, rd.Port)
	return env, nil
}

// versions asks both servers for their version, for the summary line.
func versions(e *Env) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pg, rd := "unknown", "unknown"
	if conn, err := pgx.Connect(ctx, e.PostgresURL); err == nil {
		conn.QueryRow(ctx, "SHOW server_version").Scan(&pg)
		conn.Close(ctx)
	}
	if opts, err := redis.ParseURL(e.RedisURL); err == nil {
		opts.DisableIdentity = true
		rdb := redis.NewClient(opts)
		if info, err := rdb.InfoMap(ctx, "server").Result(); err == nil {
			rd = serverOf(info["Server"])
		}
		rdb.Close()
	}
	if f := strings.Fields(pg); len(f) > 0 {
		pg = f[0] // "15.20 (Debian 15.20-0+deb12u1)"
	}
	return fmt.Sprintf("postgres_version=%s redis_server=%s", pg, rd)
}

// serverOf is "redis-7.0.15" or "valkey-8.1.1" from INFO server's fields
// (Valkey answers redis_version:7.2.4 whatever its release).
// invalidator.ServerOf reads the same for the daemon; this package cannot
// import it, since invalidator's tests import this package.
func serverOf(info map[string]string) string {
	name, version := info["server_name"], info["redis_version"]
	if name == "" {
		name = "redis"
	}
	if v := info["valkey_version"]; v != "" {
		version = v
	}
	return name + "-" + version
}

// Main runs a package's tests with one shared Env, which it stores in *env,
// and exits with their status. Use it from TestMain:
//
//	var env *testenv.Env
//	func TestMain(m *testing.M) { testenv.Main(m, &env) }
//
// It prints "testenv: backend=NAME ..." once. When no servers can be had,
// the package fails with the reason; no test skips.
func Main(m interface{ Run() int }, env **Env) {
	os.Exit(run(m, env))
}

func run(m interface{ Run() int }, env **Env) int {
	// Minutes: the first container start may have to pull an image.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	e, err := Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: cannot start PostgreSQL and Redis for the tests: %v\n", err)
		return 1
	}
	defer e.Close()
	fmt.Printf("testenv: backend=%s %s %s\n", e.Backend, e.Summary, versions(e))
	*env = e
	return m.Run()
}
