package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// postgresSettings are added to localsvc's (fsync=off, full_page_writes=off,
// synchronous_commit=on). Autovacuum and checkpoints would otherwise land in
// the middle of one contender and not another.
var postgresSettings = []string{
	"autovacuum=off",
	"max_wal_size=16GB",
	"checkpoint_timeout=1h",
	"shared_buffers=256MB",
}

const (
	publication = "bench"
	otherRows   = 10_000 // rows in the table the background load updates
	categories  = 100    // items.cat takes values 0..categories-1
	// sentinelID is the items row that only the last transaction of a backlog
	// touches: its key item:0 going away means that transaction was applied.
	sentinelID  = 0
	sentinelKey = "item:0"
)

// env is the private PostgreSQL and Redis and the binaries under test.
type env struct {
	o     options
	root  string
	tmp   string
	pg    *localsvc.Postgres
	redis *localsvc.Redis
	conn  *pgx.Conn     // control connection: setup, slots, polling
	rdb   *redis.Client // the Redis the catch-up contenders write to
	// The Redis Cluster of "daemon (cluster)", started by startCluster.
	cluster      *localsvc.RedisCluster
	crdb         *redis.ClusterClient
	clusterSeeds []string // the masters' host:port, the daemon's addrs
	daemon       string   // path of the built pg-invalidator
	self         string   // path of this program, run again as "bench baseline"
	machine      Machine
	t0           time.Time
}

func (e *env) logf(format string, args ...any) {
	if e.o.verbose {
		fmt.Fprintf(os.Stderr, "[%7.1fs] %s\n", time.Since(e.t0).Seconds(), fmt.Sprintf(format, args...))
	}
}

// step prints a progress line whatever -v says: the full run is long.
func (e *env) step(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%7.1fs] %s\n", time.Since(e.t0).Seconds(), fmt.Sprintf(format, args...))
}

func setup(ctx context.Context, root string, o options) (_ *env, err error) {
	e := &env{o: o, root: root, t0: time.Now()}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.tmp, err = os.MkdirTemp("", "pginv-bench-")
	if err != nil {
		return nil, err
	}
	if e.self, err = os.Executable(); err != nil {
		return nil, fmt.Errorf("find this program: %w", err)
	}

	e.step("building pg-invalidator")
	if e.daemon, err = buildDaemon(ctx, root, e.tmp); err != nil {
		return nil, err
	}

	e.step("starting PostgreSQL and Redis")
	e.pg, err = localsvc.StartPostgres(ctx, localsvc.PostgresOptions{Settings: postgresSettings})
	if err != nil {
		return nil, err
	}
	e.redis, err = localsvc.StartRedis(ctx)
	if err != nil {
		return nil, err
	}
	e.conn, err = pgx.Connect(ctx, e.pg.URL())
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	e.rdb = newRedisClient(e.redis.Addr())

	e.step("loading %d rows into items", e.o.largeRows)
	for _, sql := range []string{
		`CREATE TABLE items (id bigint PRIMARY KEY, cat int NOT NULL, v bigint NOT NULL)`,
		`ALTER TABLE items REPLICA IDENTITY FULL`,
		fmt.Sprintf(`INSERT INTO items SELECT g, g %% %d, 0 FROM generate_series(1, %d) g`, categories, e.o.largeRows),
		fmt.Sprintf(`INSERT INTO items VALUES (%d, -1, 0)`, sentinelID),
		`CREATE TABLE other (id bigint PRIMARY KEY, v bigint NOT NULL)`,
		fmt.Sprintf(`INSERT INTO other SELECT g, 0 FROM generate_series(1, %d) g`, otherRows),
		// The same statement the daemon would run itself.
		`CREATE PUBLICATION ` + publication + ` FOR TABLE public.items, public.other
		   WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)`,
		`VACUUM (FREEZE, ANALYZE) items, other`,
		`CHECKPOINT`,
	} {
		if _, err := e.conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("set up schema: %s: %w", firstLine(sql), err)
		}
	}
	e.machine, err = e.readMachine(ctx)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// startCluster starts the Redis Cluster once per run: 3 masters, each with
// one replica.
func (e *env) startCluster(ctx context.Context) error {
	if e.cluster != nil {
		return nil
	}
	e.step("starting a Redis Cluster (3 masters, 3 replicas)")
	c, err := localsvc.StartRedisCluster(ctx, 3, 1, 5*time.Second)
	if err != nil {
		return fmt.Errorf("start the redis cluster: %w", err)
	}
	e.cluster = c
	e.clusterSeeds = c.Addrs()[:3] // seeds only: the client and the daemon discover the rest
	e.crdb = redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                    e.clusterSeeds,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	return nil
}

func (e *env) close() {
	if e.crdb != nil {
		e.crdb.Close()
	}
	if e.cluster != nil {
		e.cluster.Close()
	}
	if e.conn != nil {
		e.conn.Close(context.Background())
	}
	if e.rdb != nil {
		e.rdb.Close()
	}
	if e.redis != nil {
		e.redis.Close()
	}
	if e.pg != nil {
		e.pg.Close()
	}
	if e.tmp != "" {
		os.RemoveAll(e.tmp)
	}
}

// buildDaemon builds cmd/pg-invalidator into dir, static, with -trimpath.
func buildDaemon(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "pg-invalidator")
	gobin, err := goTool()
	if err != nil {
		return "", err
	}
	build := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-o", bin, "./cmd/pg-invalidator")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build pg-invalidator: %w: %s", err, bytes.TrimSpace(out))
	}
	return bin, nil
}

func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no go command on PATH to build pg-invalidator with")
}

func newRedisClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:                     addr,
		DisableIdentity:          true, // Redis 7.0 logs handshake errors otherwise
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// pgbenchBin and recvlogicalBin sit next to the server binaries.
func pgTool(name string) (string, error) {
	dir, err := localsvc.PostgresBinDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found next to the PostgreSQL server binaries in %s", name, dir)
	}
	return p, nil
}

// Machine describes where the numbers were measured.
type Machine struct {
	Nproc    int    `json:"nproc"`
	CPU      string `json:"cpu"`
	MemoryMB int    `json:"memory_mb"`
	Kernel   string `json:"kernel"`
	Postgres string `json:"postgres"`
	Redis    string `json:"redis"`
	Go       string `json:"go"`
}

func (e *env) readMachine(ctx context.Context) (Machine, error) {
	m := Machine{Nproc: runtime.NumCPU(), Go: runtime.Version()}
	if out, err := exec.Command("nproc").Output(); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
			m.Nproc = n
		}
	}
	m.CPU = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.Atoi(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB")); err == nil {
		m.MemoryMB = kb / 1024
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if err := e.conn.QueryRow(ctx, `SELECT version()`).Scan(&m.Postgres); err != nil {
		return m, fmt.Errorf("read postgres version: %w", err)
	}
	info, err := e.rdb.Info(ctx, "server").Result()
	if err != nil {
		return m, fmt.Errorf("read redis version: %w", err)
	}
	m.Redis = infoField(info, "redis_version")
	return m, nil
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// infoField returns one field of a Redis INFO reply.
func infoField(info, key string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+":"); ok {
			return v
		}
	}
	return ""
}

// redisCPU returns used_cpu_sys + used_cpu_user of a Redis, in seconds; of
// a cluster, summed over every node, masters and replicas.
func redisCPU(ctx context.Context, rdb redis.UniversalClient) float64 {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		sum := 0.0
		cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
			v := redisCPU(ctx, c)
			mu.Lock()
			sum += v
			mu.Unlock()
			return nil
		})
		return sum
	}
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0
	}
	sys, _ := strconv.ParseFloat(infoField(info, "used_cpu_sys"), 64)
	user, _ := strconv.ParseFloat(infoField(info, "used_cpu_user"), 64)
	return sys + user
}

// procStat is what /proc/<pid> says about a process's CPU time and memory.
type procStat struct {
	cpu   float64 // user + system seconds
	hwmKB int64   // VmHWM: peak resident set size
	rssKB int64   // VmRSS
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times; 100 on Linux.
const clockTicks = 100

func readProc(pid int) (procStat, bool) {
	var s procStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, false
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return s, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 { // utime and stime are fields 14 and 15, here 11 and 12
		return s, false
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	s.cpu = (ut + st) / clockTicks
	st2 := fmt.Sprintf("/proc/%d/status", pid)
	if v := procField(st2, "VmHWM"); v != "" {
		s.hwmKB, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, "kB")), 10, 64)
	}
	if v := procField(st2, "VmRSS"); v != "" {
		s.rssKB, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, "kB")), 10, 64)
	}
	return s, true
}

// loadAvg is the 1-minute load average, or 0 when unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// walsenderSegments reads how many TCP data segments the socket of the
// walsender with pid has sent (data_segs_out, from ss -tinp). ok is false
// over a Unix socket, when the walsender is gone, or without ss.
func (e *env) walsenderSegments(pid int) (n int64, ok bool) {
	if pid == 0 {
		return 0, false
	}
	out, err := exec.Command("ss", "-tinpH", "state", "established", fmt.Sprintf("( sport = :%d )", e.pg.Port)).Output()
	if err != nil {
		return 0, false
	}
	// Each socket is a line naming its process, then a line of TCP_INFO.
	lines := strings.Split(string(out), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.Contains(lines[i], fmt.Sprintf("pid=%d,", pid)) {
			continue
		}
		for _, f := range strings.Fields(lines[i+1]) {
			if v, found := strings.CutPrefix(f, "data_segs_out:"); found {
				n, err := strconv.ParseInt(v, 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}

// Slots.

func (e *env) createSlot(ctx context.Context, name string) (pglogrepl.LSN, error) {
	var lsn pglogrepl.LSN
	err := e.conn.QueryRow(ctx, `SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')`, name).Scan(&lsn)
	if err != nil {
		return 0, fmt.Errorf("create slot %s: %w", name, err)
	}
	return lsn, nil
}

func (e *env) copySlot(ctx context.Context, src, dst string) error {
	if _, err := e.conn.Exec(ctx, `SELECT pg_copy_logical_replication_slot($1, $2)`, src, dst); err != nil {
		return fmt.Errorf("copy slot %s to %s: %w", src, dst, err)
	}
	return nil
}

// dropSlot drops a slot, waiting for a walsender that is still exiting.
func (e *env) dropSlot(ctx context.Context, name string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := e.conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, name)
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("drop slot %s: %w", name, err)
			}
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// slotState returns a slot's confirmed_flush_lsn and the pid of the
// walsender using it (0 when none).
func (e *env) slotState(ctx context.Context, name string) (pglogrepl.LSN, int, error) {
	var lsn pglogrepl.LSN
	var pid *int32
	err := e.conn.QueryRow(ctx, `SELECT confirmed_flush_lsn, active_pid FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&lsn, &pid)
	if err != nil {
		return 0, 0, fmt.Errorf("read slot %s: %w", name, err)
	}
	if pid == nil {
		return lsn, 0, nil
	}
	return lsn, int(*pid), nil
}

// writeRules writes the daemon's rules file for one slot; with seeds, a
// [redis] table in mode "cluster" with those addrs.
func (e *env) writeRules(slot string, seeds []string) (string, error) {
	path := filepath.Join(e.tmp, slot+".toml")
	rules := fmt.Sprintf(`[postgres]
slot = %q
publication = %q
%s
[[rule]]
table = "public.items"
del   = ["item:<id>", "items:cat:<cat>"]

[[rule]]
table = "public.other"
del   = ["other:<id>"]
`, slot, publication, visibilityLine(e.o.visibility))
	if len(seeds) > 0 {
		q := make([]string, len(seeds))
		for i, a := range seeds {
			q[i] = strconv.Quote(a)
		}
		rules += fmt.Sprintf("\n[redis]\nmode  = \"cluster\"\naddrs = [%s]\n", strings.Join(q, ", "))
	}
	return path, os.WriteFile(path, []byte(rules), 0o644)
}

// visibilityLine is the [postgres] line that sets visibility to v; empty
// for the daemon's default.
func visibilityLine(v string) string {
	if v == "" {
		return ""
	}
	return fmt.Sprintf("visibility = %q\n", v)
}
