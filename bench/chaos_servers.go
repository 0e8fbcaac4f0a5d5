package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/tcpproxy"
)

// The chaos run's servers: a primary PostgreSQL, a streaming standby that
// readers read from, a TCP proxy the daemons reach the primary through, a
// plain Redis (the daemon's default target) and a Sentinel group (the
// target "ha"), all private, on free ports; and the daemons, each run by a
// supervisor that restarts it when it exits, as systemd would.

const (
	chaosSlot        = "chaos"
	chaosStandbyName = "chaos_standby"
	// chaosReadyWindow is the daemons' --ready-window: much shorter than
	// the default 30 s, so that the faults (a Redis paused, PostgreSQL
	// silenced, for up to 10 s) stall invalidation for longer than it and
	// /readyz must turn: a daemon that said ready throughout would fail the
	// readiness check.
	chaosReadyWindow = 3 * time.Second
	// chaosHeartbeat is the rules' [postgres] heartbeat: how often a canary
	// goes out, which bounds how late /readyz may notice a stall that
	// reports no error (about heartbeat plus the ready window).
	chaosHeartbeat = time.Second
	// chaosRedelete is the items and events rules' redelete_after; readers
	// and plants drop a SET later than chaosSetBudget after their read, so
	// that every stale set lands before the re-delete.
	chaosRedelete  = time.Second
	chaosSetBudget = 250 * time.Millisecond
	// chaosRestartDelay is the supervisor's pause before it starts a daemon
	// that exited again (systemd's RestartSec).
	chaosRestartDelay = time.Second
	// chaosCatalogPoll is the daemon's catalog poll (not configurable): a
	// swap or a detach is flushed within it.
	chaosCatalogPoll = 10 * time.Second
)

// chaosTarget is one Redis target of the daemon, as the harness reaches it.
type chaosTarget struct {
	name   string        // the daemon's name for it: "default" or "ha"
	client *redis.Client // for plants, the checks and the end's quiesce; sentinel-aware for "ha"

	mu sync.RWMutex // plants hold it for reading; a fault on this target holds it to change faulty
	// faulty is true while a fault is injected on this target: writers
	// plant nothing there, since a SET in flight across the fault could land
	// at any time after it.
	faulty bool
	// lostData is when the target last lost its data (a restart with
	// nothing on disk); zero: never. A version key missing or seeded by a
	// reader after it says nothing about transactions committed before.
	lostData time.Time
}

// setFaulty marks the target faulty (or healthy again) once no plant is in
// flight on it.
func (t *chaosTarget) setFaulty(on bool) {
	t.mu.Lock()
	t.faulty = on
	t.mu.Unlock()
}

// servers starts everything but the daemons.
func (c *chaos) startServers(ctx context.Context) error {
	var err error
	c.step("starting PostgreSQL, a standby, a Redis and a Sentinel group (master, replica, 3 sentinels)")
	if c.pg, err = localsvc.StartPostgres(ctx, localsvc.PostgresOptions{}); err != nil {
		return err
	}
	// The standby reconnects fast after the primary restarts, so that the
	// replica gate rarely has to give it up.
	if c.standby, err = localsvc.StartStandby(ctx, c.pg, localsvc.StandbyOptions{Name: chaosStandbyName,
		Settings: []string{"wal_retrieve_retry_interval=500ms", "hot_standby_feedback=on"}}); err != nil {
		return err
	}
	u, err := url.Parse(c.pg.URL())
	if err != nil {
		return err
	}
	if c.proxy, err = tcpproxy.Start(u.Host); err != nil {
		return err
	}
	if c.redis, err = localsvc.StartRedis(ctx); err != nil {
		return err
	}
	if c.sentinel, err = localsvc.StartRedisSentinel(ctx); err != nil {
		return err
	}
	c.ctl = &ctlConn{url: c.pg.URL()}
	c.targets = []*chaosTarget{
		{name: "default", client: redis.NewClient(chaosRedisOptions(c.redis.Addr()))},
		{name: "ha", client: redis.NewFailoverClient(chaosFailoverOptions(c.sentinel.SentinelAddrs()))},
	}
	for _, sql := range chaosSchema() {
		if err := c.ctl.exec(ctx, sql); err != nil {
			return fmt.Errorf("schema: %s: %w", firstLine(sql), err)
		}
	}
	return nil
}

// chaosRedisOptions are the harness's and the readers' Redis client
// settings: short timeouts and no retries, so that a SET is sent once, when
// the caller decides, or fails.
func chaosRedisOptions(addr string) *redis.Options {
	return &redis.Options{Addr: addr, DisableIdentity: true, MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second, PoolTimeout: time.Second}
}

// chaosFailoverOptions are chaosRedisOptions for a client that asks the
// sentinels where the master is.
func chaosFailoverOptions(sentinels []string) *redis.FailoverOptions {
	return &redis.FailoverOptions{MasterName: localsvc.SentinelMaster, SentinelAddrs: sentinels, DisableIdentity: true,
		MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second, PoolTimeout: time.Second}
}

func (c *chaos) closeServers() {
	for _, t := range c.targets {
		t.client.Close()
	}
	if c.ctl != nil {
		c.ctl.close()
	}
	if c.proxy != nil {
		c.proxy.Close()
	}
	if c.sentinel != nil {
		c.sentinel.Close()
	}
	if c.redis != nil {
		c.redis.Close()
	}
	if c.standby != nil {
		c.standby.Close()
	}
	if c.pg != nil {
		c.pg.Close()
	}
}

// The rules.

// chaosRuleSets is how many rule files the SIGHUP fault cycles through.
const chaosRuleSets = 3

// writeRules writes rule set n (0 to chaosRuleSets-1) to the rules file.
// Every set invalidates the same cached keys, so that a cached value's
// fate does not depend on which set was in force; they differ in what a
// reload has to do: set 1 changes redelete_after and adds an incr rule, set
// 2 adds a rule for chaos_notes (the publication gains the table, and the
// catalog watch flushes its keys) and changes the events rule's
// redelete_after.
func (c *chaos) writeRules(n int) error {
	itemsRedelete, eventsRedelete := chaosRedelete, chaosRedelete
	var extra string
	switch n {
	case 1:
		itemsRedelete += 500 * time.Millisecond
		extra = "\n[[rule]]\ntable = \"chaos_prices\"\nincr = [\"chaos:pcount\"]\n"
	case 2:
		eventsRedelete += 200 * time.Millisecond
		extra = "\n[[rule]]\ntable = \"chaos_notes\"\ndel = [\"chaos:note:<id>\"]\n"
	}
	q := make([]string, 0, 3)
	for _, a := range c.sentinel.SentinelAddrs() {
		q = append(q, strconv.Quote(a))
	}
	body := fmt.Sprintf(`# rule set %d of the chaos run
[postgres]
slot = %q
publication = %q
heartbeat = %q
timeout = "5s"
replicas = [%q]
replica_timeout = "20s"
visibility = "on"

[redis]
url = %q

[[target]]
name = "ha"
mode = "sentinel"
addrs = [%s]
master = %q
wait_replicas = 1

[[rule]]
table = "chaos_items"
del = ["chaos:item:<id>", "chaos:cat:<cat>"]
redelete_after = %q

[[rule]]
table = "chaos_events"
del = ["chaos:event:<region>:<id>", "chaos:events:<region>"]
redelete_after = %q

[[rule]]
table = "chaos_prices"
version = ["chaos:pver:<id>"]
%s`, n, chaosSlot, chaosSlot, chaosHeartbeat.String(), chaosStandbyName, c.redis.URL(), strings.Join(q, ", "),
		localsvc.SentinelMaster, itemsRedelete.String(), eventsRedelete.String(), extra)
	tmp := c.rulesPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	c.ruleSet = n
	return os.Rename(tmp, c.rulesPath) // a daemon starting now reads the old file or the new, never half of one
}

// The daemons.

// unit is one daemon under a supervisor: started, restarted
// chaosRestartDelay after it exits while the unit is enabled, as systemd
// runs a service with Restart=always.
type unit struct {
	name    string // "a" or "b"; the daemon's application_name is "chaos_" + name
	metrics string // host:port of its /metrics and /readyz
	logPath string // every start appends to it

	mu       sync.Mutex    // protects the fields below
	enabled  bool          // the supervisor restarts it when it exits
	proc     *child        // the running process; nil between two
	started  time.Time     // when proc started
	starts   int           // processes started
	expected bool          // the harness stops proc: its exit is no anomaly
	kick     chan struct{} // wakes the supervisor when enabled turns on
}

// expectExit notes that the harness is about to stop u's process.
func (u *unit) expectExit() {
	u.mu.Lock()
	u.expected = true
	u.mu.Unlock()
}

func (c *chaos) newUnit(name string) (*unit, error) {
	port, err := localsvc.FreePort()
	if err != nil {
		return nil, err
	}
	return &unit{name: name, metrics: fmt.Sprintf("127.0.0.1:%d", port), logPath: filepath.Join(c.tmp, "daemon-"+name+".log"),
		kick: make(chan struct{}, 1)}, nil
}

// supervise runs u until ctx ends.
func (c *chaos) supervise(ctx context.Context, u *unit) {
	for ctx.Err() == nil {
		u.mu.Lock()
		enabled := u.enabled
		u.mu.Unlock()
		if !enabled {
			select {
			case <-ctx.Done():
				return
			case <-u.kick:
			}
			continue
		}
		p, err := c.startDaemon(u)
		if err != nil {
			c.anomaly("daemon %s: %v", u.name, err)
			sleepCtx(ctx, chaosRestartDelay)
			continue
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			p.stop()
		}
		u.mu.Lock()
		u.proc = nil
		expected := u.expected
		u.expected = false
		u.mu.Unlock()
		if ctx.Err() == nil {
			if !expected {
				c.anomaly("daemon %s (pid %d) exited on its own: %v; its log ends:\n%s", u.name, p.pid(), p.err, tail(u.logPath))
			}
			c.event("daemon %s (pid %d) exited: %v; restarting in %s if enabled", u.name, p.pid(), p.err, chaosRestartDelay)
			sleepCtx(ctx, chaosRestartDelay)
		}
	}
}

// startDaemon starts u's process; its output is appended to u's log.
func (c *chaos) startDaemon(u *unit) (*child, error) {
	f, err := os.OpenFile(u.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "---- %s: start %s\n", time.Now().UTC().Format(time.RFC3339Nano), u.name)
	cmd := exec.Command(c.daemonBin, "run", "--config", c.rulesPath, "--postgres", c.proxiedURL("chaos_"+u.name),
		"--metrics-addr", u.metrics, "--ready-window", chaosReadyWindow.String())
	cmd.Stdout, cmd.Stderr = f, f
	dieWithBench(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start: %w", err)
	}
	p := &child{name: "pg-invalidator " + u.name, cmd: cmd, logPath: u.logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	u.mu.Lock()
	u.proc, u.started = p, time.Now()
	u.starts++
	u.mu.Unlock()
	return p, nil
}

// proxiedURL is the primary's URL through the proxy, with application_name
// set to name, so that pg_stat_activity tells the daemons apart.
func (c *chaos) proxiedURL(name string) string {
	u, _ := url.Parse(c.pg.URL()) // localsvc's own URL
	u.Host = c.proxy.Addr()
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// enable turns u's supervisor on or off. Off leaves a running process
// alone: the caller stops it.
func (u *unit) enable(on bool) {
	u.mu.Lock()
	u.enabled = on
	u.mu.Unlock()
	if on {
		select {
		case u.kick <- struct{}{}:
		default:
		}
	}
}

// running returns u's process, and how long it has run; nil when none.
func (u *unit) running() (*child, time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.proc == nil || u.proc.exited() {
		return nil, 0
	}
	return u.proc, time.Since(u.started)
}

func (u *unit) isEnabled() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.enabled
}

// signal sends sig to u's process, if one runs; false when none does.
func (u *unit) signal(sig syscall.Signal) (int, bool) {
	p, _ := u.running()
	if p == nil {
		return 0, false
	}
	return p.pid(), p.cmd.Process.Signal(sig) == nil
}

// healthy reports whether u's process answers /healthz, which it serves
// only once it handles SIGHUP.
func (u *unit) healthy() bool {
	code, _ := httpGetBody(u.metrics, "/healthz")
	return code == http.StatusOK
}

// slotHolder returns the unit whose process streams from the slot, by its
// application_name; nil when none does (or the holder is a process the
// harness no longer runs, such as a silenced one).
func (c *chaos) slotHolder(ctx context.Context) *unit {
	var name string
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := c.ctl.queryRow(qctx, `SELECT a.application_name FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.slot_name = $1`, []any{chaosSlot}, &name)
	if err != nil {
		return nil
	}
	for _, u := range c.units {
		if name == "chaos_"+u.name {
			if p, _ := u.running(); p != nil {
				return u
			}
		}
	}
	return nil
}

// waitFor polls cond every 50 ms until it holds or within passes.
func waitFor(ctx context.Context, within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// discardLogger is for go-redis's own lines: a line per failed dial while a
// Redis is down would bury the run's own.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// ctlConn is a connection of the harness to the primary, used by one
// goroutine at a time and made again after the server restarted.
type ctlConn struct {
	url string

	mu   sync.Mutex // protects conn, and serializes its use
	conn *pgx.Conn  // nil until the first use, and after a failure
}

// do runs f on the connection, connecting first if needed, or again if the
// server ended it. A connection f left broken is dropped, to be made again
// by the next call.
func (c *ctlConn) do(ctx context.Context, f func(*pgx.Conn) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		// A connection the server ended (a restart) fails at its next
		// use: find out now, and make a new one.
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if c.conn.Ping(pctx) != nil {
			c.conn.Close(context.Background())
			c.conn = nil
		}
		cancel()
	}
	if c.conn == nil || c.conn.IsClosed() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, c.url)
		cancel()
		if err != nil {
			return err
		}
		c.conn = conn
	}
	err := f(c.conn)
	if err != nil && (c.conn.IsClosed() || ctx.Err() != nil) {
		c.conn.Close(context.Background())
		c.conn = nil
	}
	return err
}

// queryRow scans one row of sql into dest.
func (c *ctlConn) queryRow(ctx context.Context, sql string, args []any, dest ...any) error {
	return c.do(ctx, func(conn *pgx.Conn) error { return conn.QueryRow(ctx, sql, args...).Scan(dest...) })
}

// exec runs sql.
func (c *ctlConn) exec(ctx context.Context, sql string, args ...any) error {
	return c.do(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
}

func (c *ctlConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close(context.Background())
		c.conn = nil
	}
}
