package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// Environment variables that choose the images of the testcontainers backend.
const (
	EnvPostgresImage = "PGINV_TEST_POSTGRES_IMAGE"
	EnvRedisImage    = "PGINV_TEST_REDIS_IMAGE"
)

// The images used when the variables are unset: the official ones, pulled
// from Docker Hub on first use.
const (
	DefaultPostgresImage = "postgres:16"
	DefaultRedisImage    = "redis:7"
)

// RunLabel is the label on every container this package starts. Its value is
// $PGINV_CI_RUN (set by .ci/with-docker, which removes the containers of its
// run by it), or "go-test".
const RunLabel = "pg-invalidator.testenv"

// postgresSettings are the server settings of every container PostgreSQL;
// localsvc starts local servers with the same ones.
var postgresSettings = []string{
	"wal_level=logical",
	"max_replication_slots=64",
	"max_wal_senders=64",
	"max_connections=200",
	"fsync=off",
	"full_page_writes=off",
	"synchronous_commit=on",
}

// errNoDocker marks a failure to reach a Docker engine at all, after which
// an unset PGINV_TEST_BACKEND falls back to local binaries.
var errNoDocker = errors.New("no Docker engine answers")

// startContainers starts PostgreSQL and Redis through testcontainers.
//
// An image is started in one of two ways, chosen by its own configuration:
//   - An image with an entrypoint or a command, such as the official
//     postgres and redis images (the defaults), is started through its
//     entrypoint by the testcontainers modules, on the engine's default
//     network, and reached through a mapped port.
//   - An image with neither, such as the Debian root file system that
//     .ci/test-image imports (CI runs this path), is a bag of binaries: the
//     container runs initdb and then postgres as the postgres user, or
//     redis-server as the redis user, with host networking, listening on
//     127.0.0.1 on a free port. Such an image must already be on the engine.
func startContainers(ctx context.Context) (*Env, error) {
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoDocker, err)
	}
	defer provider.Close()
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = provider.Health(hctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoDocker, err)
	}

	pgImage, rdImage := imageFromEnv(EnvPostgresImage, DefaultPostgresImage), imageFromEnv(EnvRedisImage, DefaultRedisImage)
	pgBare, err := bareImage(ctx, provider, pgImage)
	if err != nil {
		return nil, err
	}
	rdBare, err := bareImage(ctx, provider, rdImage)
	if err != nil {
		return nil, err
	}

	if !pgBare || !rdBare {
		if err := needBridge(ctx, provider); err != nil {
			return nil, err
		}
	}

	env := &Env{Backend: BackendTestcontainers}
	var pgAddr, rdAddr string
	if pgBare {
		env.PostgresURL, pgAddr, err = startBarePostgres(ctx, env, pgImage)
	} else {
		env.PostgresURL, pgAddr, err = startOfficialPostgres(ctx, env, pgImage)
	}
	if err != nil {
		env.Close()
		return nil, withHints(err, EnvPostgresImage)
	}
	if rdBare {
		env.RedisURL, rdAddr, err = startBareRedis(ctx, env, rdImage)
	} else {
		env.RedisURL, rdAddr, err = startOfficialRedis(ctx, env, rdImage)
	}
	if err != nil {
		env.Close()
		return nil, withHints(err, EnvRedisImage)
	}
	start := startMode(pgBare)
	if pgBare != rdBare {
		start = "postgres:" + start + ",redis:" + startMode(rdBare)
	}
	env.Summary = fmt.Sprintf("image=%s redis_image=%s start=%s postgres=%s redis=%s", pgImage, rdImage, start, pgAddr, rdAddr)
	return env, nil
}

func imageFromEnv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func startMode(bare bool) string {
	if bare {
		return "command/host-network"
	}
	return "entrypoint/mapped-port"
}

// bareImage says whether image has neither entrypoint nor command. An image
// the engine does not have is taken for an official one, to be pulled.
func bareImage(ctx context.Context, provider *testcontainers.DockerProvider, image string) (bool, error) {
	res, err := provider.Client().ImageInspect(ctx, image)
	if cerrdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inspect image %s: %w", image, err)
	}
	if res.Config == nil {
		return true, nil
	}
	return len(res.Config.Entrypoint) == 0 && len(res.Config.Cmd) == 0, nil
}

// needBridge fails unless the engine has its default bridge network.
func needBridge(ctx context.Context, provider *testcontainers.DockerProvider) error {
	_, err := provider.Client().NetworkInspect(ctx, "bridge", client.NetworkInspectOptions{})
	switch {
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("the Docker engine at %s has no bridge network, which the official images need for their mapped ports "+
			"(and testcontainers would create one, with an address in a private range); set %s and %s to an image without "+
			"entrypoint, which runs on the host network (.ci/test-image builds one)",
			provider.Client().DaemonHost(), EnvPostgresImage, EnvRedisImage)
	case err != nil:
		return fmt.Errorf("inspect the bridge network: %w", err)
	}
	return nil
}

// withHints adds what to do to the errors seen where no registry answers.
func withHints(err error, imageVar string) error {
	msg := err.Error()
	switch {
	case strings.Contains(strings.ToLower(msg), "reaper") && os.Getenv("TESTCONTAINERS_RYUK_DISABLED") != "true":
		return fmt.Errorf("%w (the reaper image could not start; where no registry answers, set TESTCONTAINERS_RYUK_DISABLED=true and remove containers by their %s label)", err, RunLabel)
	case strings.Contains(msg, "pull"):
		return fmt.Errorf("%w (no registry? set %s to an image the engine has; .ci/test-image builds one without a registry)", err, imageVar)
	}
	return err
}

func labels() map[string]string {
	run := os.Getenv("PGINV_CI_RUN")
	if run == "" {
		run = "go-test"
	}
	return map[string]string{RunLabel: run}
}

func terminate(c testcontainers.Container) func() {
	return func() { testcontainers.TerminateContainer(c) }
}

func startOfficialPostgres(ctx context.Context, env *Env, image string) (url, addr string, err error) {
	var args []string
	for _, s := range postgresSettings {
		args = append(args, "-c", s)
	}
	c, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("postgres"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
		testcontainers.WithCmdArgs(args...),
		testcontainers.WithLabels(labels()),
		tcpostgres.BasicWaitStrategies())
	if c != nil {
		env.closers = append(env.closers, terminate(c))
	}
	if err != nil {
		return "", "", fmt.Errorf("start PostgreSQL from %s: %w", image, err)
	}
	url, err = c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return "", "", fmt.Errorf("address of the PostgreSQL container: %w", err)
	}
	return url, hostPort(url), nil
}

func startOfficialRedis(ctx context.Context, env *Env, image string) (url, addr string, err error) {
	c, err := tcredis.Run(ctx, image, testcontainers.WithLabels(labels()))
	if c != nil {
		env.closers = append(env.closers, terminate(c))
	}
	if err != nil {
		return "", "", fmt.Errorf("start Redis from %s: %w", image, err)
	}
	url, err = c.ConnectionString(ctx)
	if err != nil {
		return "", "", fmt.Errorf("address of the Redis container: %w", err)
	}
	return url, hostPort(url), nil
}

// barePostgresScript initialises a cluster inside the container and runs the
// server in the foreground; "$@" are the server's -c settings. The newest
// /usr/lib/postgresql/*/bin is used.
const barePostgresScript = `set -e
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$bin/initdb" -D /tmp/pgdata -A trust -U postgres --no-sync --locale=C -E UTF8 >/dev/null
exec "$bin/postgres" -D /tmp/pgdata "$@"`

func startBarePostgres(ctx context.Context, env *Env, image string) (url, addr string, err error) {
	port, err := localsvc.FreePort()
	if err != nil {
		return "", "", err
	}
	cmd := []string{"sh", "-c", barePostgresScript, "postgres",
		"-c", "port=" + strconv.Itoa(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=/tmp"}
	for _, s := range postgresSettings {
		cmd = append(cmd, "-c", s)
	}
	c, err := startBare(ctx, env, image, "postgres", cmd,
		wait.ForLog("database system is ready to accept connections").WithStartupTimeout(2*time.Minute))
	if err != nil {
		return "", "", fmt.Errorf("start PostgreSQL from %s: %w", image, err)
	}
	addr = "127.0.0.1:" + strconv.Itoa(port)
	url = "postgres://postgres@" + addr + "/postgres?sslmode=disable"
	if err := pingPostgres(ctx, url); err != nil {
		return "", "", fmt.Errorf("PostgreSQL in %s logged it was ready, yet: %w%s", image, err, logTail(ctx, c))
	}
	return url, addr, nil
}

func startBareRedis(ctx context.Context, env *Env, image string) (url, addr string, err error) {
	port, err := localsvc.FreePort()
	if err != nil {
		return "", "", err
	}
	cmd := []string{localsvc.RedisServerName(), "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", "/tmp"}
	c, err := startBare(ctx, env, image, "redis", cmd,
		wait.ForLog("Ready to accept connections").WithStartupTimeout(time.Minute))
	if err != nil {
		return "", "", fmt.Errorf("start Redis from %s: %w", image, err)
	}
	addr = "127.0.0.1:" + strconv.Itoa(port)
	rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return "", "", fmt.Errorf("Redis in %s logged it was ready, yet: %w%s", image, err, logTail(ctx, c))
	}
	return "redis://" + addr + "/0", addr, nil
}

// startBare runs cmd as user in a container of image on the host network.
//
// The container is created through a provider whose default network is
// "host": testcontainers otherwise attaches every container to a bridge
// network, and on an engine without one (started with --bridge=none) it
// creates "reaper_default", a bridge with an address in a private range.
func startBare(ctx context.Context, env *Env, image, user string, cmd []string, ready wait.Strategy) (testcontainers.Container, error) {
	req := testcontainers.GenericContainerRequest{ContainerRequest: testcontainers.ContainerRequest{Image: image}}
	for _, opt := range []testcontainers.ContainerCustomizer{
		testcontainers.WithCmd(cmd...),
		testcontainers.WithConfigModifier(func(cfg *container.Config) { cfg.User = user }),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) { hc.NetworkMode = "host" }),
		testcontainers.WithLabels(labels()),
		testcontainers.WithWaitStrategy(ready),
	} {
		if err := opt.Customize(&req); err != nil {
			return nil, err
		}
	}
	provider, err := testcontainers.NewDockerProvider(testcontainers.WithDefaultBridgeNetwork("host"))
	if err != nil {
		return nil, err
	}
	defer provider.Close()
	c, err := provider.CreateContainer(ctx, req.ContainerRequest)
	if c != nil {
		env.closers = append(env.closers, terminate(c))
	}
	if err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return nil, fmt.Errorf("start container: %w%s", err, logTail(ctx, c))
	}
	return c, nil
}

func pingPostgres(ctx context.Context, url string) error {
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var conn *pgconn.PgConn
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err = pgconn.Connect(cctx, url)
		cancel()
		if err == nil {
			return conn.Close(ctx)
		}
	}
	return err
}

// logTail returns the end of a container's log, for an error message.
func logTail(ctx context.Context, c testcontainers.Container) string {
	rc, err := c.Logs(ctx)
	if err != nil {
		return ""
	}
	defer rc.Close()
	b, _ := io.ReadAll(io.LimitReader(rc, 1<<20))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "; the container's log ends:\n" + string(bytes.TrimSpace(b))
}

// hostPort returns the host:port of a URL, for the summary line.
func hostPort(url string) string {
	s := url[strings.Index(url, "://")+3:]
	if i := strings.LastIndex(s, "@"); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.IndexAny(s, "/?"); i >= 0 {
		s = s[:i]
	}
	return s
}
