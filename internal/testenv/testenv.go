// Package testenv gives tests a real PostgreSQL (wal_level=logical) and a real
// Redis. It is imported only by _test.go files, so the daemon binary never
// links testcontainers.
//
// Servers are found in this order:
//  1. DATABASE_URL and REDIS_URL, when both are set;
//  2. containers through testcontainers-go, when a Docker engine answers;
//  3. local binaries (/usr/lib/postgresql/*/bin and redis-server), started by
//     package localsvc on free loopback ports.
//
// When none of these works, Start returns an error that says how to install
// the binaries. Tests must fail on it, never skip.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// Env is a running PostgreSQL and Redis.
type Env struct {
	PostgresURL string
	RedisURL    string
	Source      string // "env", "testcontainers" or "local binaries"

	// Postgres and Redis are set only for local binaries; tests that stop,
	// kill or restart a server start their own with package localsvc.
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

// Start finds or starts a PostgreSQL and a Redis.
func Start(ctx context.Context) (*Env, error) {
	if pg, rd := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL"); pg != "" && rd != "" {
		return &Env{PostgresURL: pg, RedisURL: rd, Source: "env"}, nil
	}
	if env, err := startContainers(ctx); err == nil {
		return env, nil
	} else if !errors.Is(err, errNoDocker) {
		return nil, err
	}
	return startLocal(ctx)
}

var errNoDocker = errors.New("no Docker engine")

func startContainers(ctx context.Context) (*Env, error) {
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return nil, errNoDocker
	}
	hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := provider.Health(hctx); err != nil {
		provider.Close()
		return nil, errNoDocker
	}
	provider.Close()

	env := &Env{Source: "testcontainers"}
	pg, err := tcpostgres.Run(ctx, "postgres:16-alpine",
		tcpostgres.WithDatabase("postgres"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
		testcontainers.WithCmdArgs("-c", "wal_level=logical", "-c", "max_replication_slots=64", "-c", "max_wal_senders=64"),
		tcpostgres.BasicWaitStrategies())
	if err != nil {
		return nil, fmt.Errorf("start the postgres container: %w", err)
	}
	env.closers = append(env.closers, func() { testcontainers.TerminateContainer(pg) })
	env.PostgresURL, err = pg.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("postgres container address: %w", err)
	}
	rd, err := tcredis.Run(ctx, "redis:7-alpine")
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("start the redis container: %w", err)
	}
	env.closers = append(env.closers, func() { testcontainers.TerminateContainer(rd) })
	env.RedisURL, err = rd.ConnectionString(ctx)
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("redis container address: %w", err)
	}
	return env, nil
}

func startLocal(ctx context.Context) (*Env, error) {
	env := &Env{Source: "local binaries"}
	pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{})
	if err != nil {
		return nil, fmt.Errorf("no DATABASE_URL/REDIS_URL, no Docker engine, and local PostgreSQL failed: %w", err)
	}
	env.Postgres, env.PostgresURL = pg, pg.URL()
	env.closers = append(env.closers, func() { pg.Close() })
	rd, err := localsvc.StartRedis(ctx)
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("no DATABASE_URL/REDIS_URL, no Docker engine, and local Redis failed: %w", err)
	}
	env.Redis, env.RedisURL = rd, rd.URL()
	env.closers = append(env.closers, func() { rd.Close() })
	return env, nil
}

// Main runs a package's tests with one shared Env, which it stores in *env,
// and exits with their status. Use it from TestMain:
//
//	var env *testenv.Env
//	func TestMain(m *testing.M) { testenv.Main(m, &env) }
//
// When no servers can be had, every test fails with the reason; none skips.
func Main(m interface{ Run() int }, env **Env) {
	os.Exit(run(m, env))
}

func run(m interface{ Run() int }, env **Env) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	e, err := Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: cannot start PostgreSQL and Redis for the tests: %v\n", err)
		return 1
	}
	defer e.Close()
	*env = e
	return m.Run()
}
