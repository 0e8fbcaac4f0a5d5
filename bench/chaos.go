package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
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
	"github.com/pg-invalidator/pg-invalidator/invalidator"
)

// The chaos run (go run ./bench chaos; make chaos) runs the daemon, as a
// careful user configures it against races (redelete_after, replicas,
// visibility = "on", wait_replicas), under a cache-aside load while faults
// hit every part of the path, one every few seconds, and then checks what
// the daemon promises:
//
//   - no stale cache entry outlives its row: once the load stops and the
//     daemon has caught up, every cached entry equals its row (or the row is
//     gone and so is the entry): the final check;
//   - an LSN is acknowledged only after Redis applied everything before it:
//     no transaction the slot's confirmed_flush_lsn passed still has a key
//     holding a value read before it (ackChecker, chaos_check.go);
//   - /readyz is not 200 while nothing is being applied for longer than
//     the ready window (readySampler).
//
// The servers (chaos_servers.go) are private: a PostgreSQL primary with a
// streaming standby, which readers also read from and which the daemon
// waits for (replicas); a TCP proxy the daemons reach the primary
// through; a plain Redis, the daemon's default target; and a Sentinel
// group (master, replica, three sentinels), the target "ha", with
// wait_replicas = 1. Sentinel rather than Cluster: the fault is a master
// killed for good, and with Sentinel the harness can give the promoted
// master a replica on a new node (localsvc.RedisSentinel.AddReplica), so
// that the kill can come again and again in one run, each time against a
// master whose invalidations WAIT has put on a replica; readers follow the
// failover with go-redis's sentinel-aware client, as the daemon does. A
// second target also tests what the docs promise of several caches: one
// that stalls holds the acknowledgement for all.
//
// The load (chaos_load.go): writers updating, inserting and deleting rows
// of three rule tables (chaos_items, whose rule uses an old-row column;
// chaos_events, partitioned by region; chaos_prices, with a version rule),
// each logging every commit with its xid, the WAL positions around it and
// the keys it invalidates; before it commits, each plants in Redis the
// values a reader would have cached just before (so every transaction has
// stale entries to remove). Cache-aside readers (raceload.Aside) of both
// targets read from the primary or the standby.
//
// The faults (chaos_faults.go) are chosen by a generator seeded with
// -seed (CHAOS_SEED), printed first and last, so that a failing run can be
// replayed: the same seed gives the same faults, in the same order, with
// the same parameters; what the load does between them differs.
//
// The report ends with the line
//
//	chaos: seed=S faults=N transactions=T checked=C stale=X lost=Y
//
// and the exit status is 1 when X or Y is not 0, when /readyz said ready
// while nothing was applied, when something went wrong that the run did not
// cause (a daemon exiting on its own, a fault that did not take), or when
// the harness failed.

// chaosCalm is how long the load runs after the last fault: longer than a
// catalog poll, so that a swap's or a detach's flush is done, and the caches
// fill again under load, before the load stops and the final check reads
// them.
const chaosCalm = chaosCatalogPoll + 10*time.Second

// chaosOptions are the command-line flags.
type chaosOptions struct {
	duration time.Duration
	seed     uint64
	writers  int
	readers  int
	outDir   string // where the report and the logs go; empty: bench/results/local/chaos/<date>
	verbose  bool
}

func chaosMain(args []string) int {
	var o chaosOptions
	fs := flag.NewFlagSet("bench chaos", flag.ContinueOnError)
	defTime := 10 * time.Minute
	if v := os.Getenv("CHAOS_TIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench chaos: CHAOS_TIME=%q: %v\n", v, err)
			return 2
		}
		defTime = d
	}
	fs.DurationVar(&o.duration, "time", defTime, "how long faults are injected under load (default: $CHAOS_TIME, else 10m)")
	seed := fs.String("seed", os.Getenv("CHAOS_SEED"), "the fault generator's seed (default: $CHAOS_SEED, else a new one, printed)")
	fs.IntVar(&o.writers, "writers", 3, "writers")
	fs.IntVar(&o.readers, "readers", 8, "cache-aside readers: half of each target, half of those reading from the standby")
	fs.StringVar(&o.outDir, "out", "", "directory for the report and the logs (default: bench/results/local/chaos/<date>)")
	fs.BoolVar(&o.verbose, "v", false, "print every event, not only the faults")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./bench chaos [flags]

Runs the daemon under a cache-aside load on private servers (PostgreSQL with
a standby, a proxy, a Redis and a Sentinel group) while injecting a fault
every few seconds, chosen by a seeded generator; then checks that no cached
entry is stale, that no transaction was acknowledged before Redis applied
it, and that /readyz never said ready while nothing was applied.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *seed == "" {
		o.seed = rand.Uint64() % 1_000_000_000
	} else {
		s, err := strconv.ParseUint(*seed, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench chaos: seed %q: want a number\n", *seed)
			return 2
		}
		o.seed = s
	}
	if o.writers < 1 || o.readers < 4 {
		fmt.Fprintln(os.Stderr, "bench chaos: -writers must be at least 1 and -readers at least 4")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runChaos(ctx, o, os.Stdout)
}

// chaos is one run: its servers, daemons, load, faults and checks.
type chaos struct {
	o     chaosOptions
	t0    time.Time
	root  string
	tmp   string
	out   string // the results directory
	logf  *os.File
	logMu sync.Mutex // protects logf and stderr lines

	daemonBin string
	rulesPath string
	ruleSet   int // the rule set last written (writeRules)

	pg       *localsvc.Postgres
	standby  *localsvc.Postgres
	proxy    *tcpproxy.Proxy
	redis    *localsvc.Redis
	sentinel *localsvc.RedisSentinel
	ctl      *ctlConn // the harness's connection to the primary: schema, faults, quiesce, final check
	targets  []*chaosTarget
	units    []*unit

	log  commitLog
	load loadCounts

	swapMu     sync.Mutex     // protects the fields below
	swap       *swapWindow    // the last swap; nil: none yet
	swaps      int            // swaps made
	partitions map[string]int // by region: the generation of its partition now

	faults faultLog

	anomMu    sync.Mutex // protects anomalies
	anomalies []string   // what went wrong that the run did not cause

	machine Machine
}

// chaosResult is what the report prints.
type chaosResult struct {
	seed         uint64
	start        time.Time
	duration     time.Duration
	faults       int
	transactions int64
	final        finalResult
	lost         int
	violations   []string
	harnessErr   error
}

// runChaos runs, prints the report, and returns the exit status.
func runChaos(ctx context.Context, o chaosOptions, w io.Writer) int {
	c := &chaos{o: o, t0: time.Now(), partitions: map[string]int{}}
	res := &chaosResult{seed: o.seed, start: c.t0}
	fmt.Fprintf(w, "chaos: seed %d (replay with CHAOS_SEED=%d), faults for %s, started %s\n", o.seed, o.seed, o.duration, c.t0.UTC().Format(time.RFC3339))
	ack, ready, err := c.run(ctx, res)
	res.harnessErr = err
	if ack != nil {
		ack.mu.Lock()
		res.lost = len(ack.lost)
		ack.mu.Unlock()
	}
	if ready != nil {
		ready.mu.Lock()
		res.violations = ready.violations
		ready.mu.Unlock()
	}
	res.duration = time.Since(c.t0)
	res.transactions = c.load.committed.Load()
	res.faults = c.faults.total()
	c.report(w, res, ack, ready)
	c.close()
	c.anomMu.Lock()
	failed := err != nil || len(res.final.stale) > 0 || res.lost > 0 || len(res.violations) > 0 || len(c.anomalies) > 0
	c.anomMu.Unlock()
	fmt.Fprintf(w, "chaos: seed=%d faults=%d transactions=%d checked=%d stale=%d lost=%d\n",
		res.seed, res.faults, res.transactions, res.final.checked, len(res.final.stale), res.lost)
	if failed {
		return 1
	}
	return 0
}

// run sets up, loads, injects faults, quiesces and checks. ack and ready
// are returned for the report even when it fails half-way.
func (c *chaos) run(ctx context.Context, res *chaosResult) (*ackChecker, *readySampler, error) {
	if err := c.setup(ctx); err != nil {
		return nil, nil, err
	}
	// Daemons, then the checkers, then the load: the first daemon creates
	// the slot, and nothing is cached before it streams.
	stopDaemons, err := c.startDaemons(ctx)
	defer stopDaemons()
	if err != nil {
		return nil, nil, err
	}
	ack := &ackChecker{c: c, conn: &ctlConn{url: c.pg.URL()}}
	ready := &readySampler{c: c, procs: map[int]*procState{}}
	sampleCtx, stopSamplers := context.WithCancel(context.Background())
	var samplers sync.WaitGroup
	samplers.Go(func() { ack.run(sampleCtx) })
	samplers.Go(func() { ready.run(sampleCtx) })

	err = c.loadUnderFaults(ctx)
	if err == nil {
		c.step("load stopped after %d transactions; waiting for the daemon to catch up", c.load.committed.Load())
		err = c.quiesce(ctx)
	}
	stopSamplers()
	samplers.Wait()
	ack.conn.close()
	if err != nil {
		return ack, ready, err
	}
	ack.round(ctx, true) // what is still pending now, the slot has passed: applied or lost
	c.step("checking every cached entry")
	res.final, err = c.finalCheck(ctx)
	return ack, ready, err
}

// setup makes the directories, builds the daemon, starts the servers and
// writes the first rule set.
func (c *chaos) setup(ctx context.Context) error {
	var err error
	if c.root, err = moduleRoot(); err != nil {
		return err
	}
	if c.tmp, err = os.MkdirTemp("", "pginv-chaos-"); err != nil {
		return err
	}
	c.out = c.o.outDir
	if c.out == "" {
		c.out = filepath.Join(c.root, "bench", "results", "local", "chaos", fileStamp(c.t0))
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	if c.logf, err = os.Create(filepath.Join(c.out, "chaos.log")); err != nil {
		return err
	}
	invalidator.SetLogger(discardLogger()) // the harness's own clients: a line per failed dial while a Redis is down
	c.step("building pg-invalidator")
	if c.daemonBin, err = buildDaemon(ctx, c.root, c.tmp); err != nil {
		return err
	}
	if err := c.startServers(ctx); err != nil {
		return err
	}
	if c.machine, err = c.readMachine(ctx); err != nil {
		return err
	}
	c.rulesPath = filepath.Join(c.tmp, "rules.toml")
	return c.writeRules(0)
}

// startDaemons starts the two daemons' supervisors, with daemon a enabled,
// and waits until it streams. stop stops the supervisors, whatever the
// error.
func (c *chaos) startDaemons(ctx context.Context) (stop func(), err error) {
	for _, name := range []string{"a", "b"} {
		u, err := c.newUnit(name)
		if err != nil {
			return func() {}, err
		}
		c.units = append(c.units, u)
	}
	superCtx, stopSupervisors := context.WithCancel(context.Background())
	var supervisors sync.WaitGroup
	stop = func() {
		for _, u := range c.units {
			u.enable(false)
		}
		stopSupervisors()
		supervisors.Wait()
	}
	for _, u := range c.units {
		supervisors.Go(func() { c.supervise(superCtx, u) })
	}
	a := c.units[0]
	a.enable(true)
	c.step("starting daemon a, and waiting until it streams")
	if !waitFor(ctx, 60*time.Second, func() bool { return c.slotHolder(ctx) == a && a.ready() }) {
		return stop, fmt.Errorf("daemon a did not stream and answer /readyz 200 within 60s; its log %s ends:\n%s", a.logPath, tail(a.logPath))
	}
	return stop, nil
}

// loadUnderFaults runs the load, injects faults for the run's duration,
// lets the load go on for chaosCalm without them, and stops it.
func (c *chaos) loadUnderFaults(ctx context.Context) error {
	loadCtx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	defer func() {
		stopLoad()
		load.Wait()
	}()
	c.startLoad(loadCtx, &load)
	c.step("load: %d writers, %d readers; a fault every %s-%s for %s", c.o.writers, c.o.readers, faultGap[0], faultGap[1], c.o.duration)
	if err := c.injectFaults(ctx, c.o.duration); err != nil {
		return err
	}
	// The load goes on without faults for a while: the caches fill again
	// after the last flushes, under the writers, and what the final check
	// finds cached is that.
	c.step("faults over; the load goes on for %s", chaosCalm)
	sleepCtx(ctx, chaosCalm)
	return ctx.Err()
}

// startLoad starts the writers and the readers on wg until ctx ends.
func (c *chaos) startLoad(ctx context.Context, wg *sync.WaitGroup) {
	for i := range c.o.writers {
		w := &writer{c: c, n: i, of: c.o.writers, rng: rand.New(rand.NewPCG(c.o.seed, uint64(1000+i)))}
		wg.Go(func() { w.run(ctx) })
	}
	for i := range c.o.readers {
		t := c.targets[i%2]
		client := redis.NewClient(chaosRedisOptions(c.redis.Addr()))
		if t.name == "ha" {
			client = redis.NewFailoverClient(chaosFailoverOptions(c.sentinel.SentinelAddrs()))
		}
		url := c.pg.URL()
		if (i/2)%2 == 1 {
			url = c.standby.URL()
		}
		r := &reader{c: c, target: t, client: client, dbURL: url, rng: rand.New(rand.NewPCG(c.o.seed, uint64(2000+i)))}
		wg.Go(func() { r.run(ctx) })
	}
}

// quiesce waits, once the load stopped, until the daemon has applied
// everything: a sentinel row updated (with its keys planted) is applied in
// every target, the slot is past its commit, no re-delete is pending, and
// every swap and detach has been flushed (two catalog polls after the
// last).
func (c *chaos) quiesce(ctx context.Context) error {
	if wait := time.Until(c.faults.lastCatalog().Add(2*chaosCatalogPoll + time.Second)); wait > 0 {
		c.step("waiting %s: two catalog polls after the last swap, detach or reload", wait.Round(time.Second))
		sleepCtx(ctx, wait)
	}
	if sw := c.currentSwap(); sw != nil && sw.handledAt().IsZero() {
		if !waitFor(ctx, 2*time.Minute, func() bool { return !sw.handledAt().IsZero() }) {
			return errors.New("the last table swap was never counted handled (catalog_changes_total{change=\"swapped\"}) within 2 minutes")
		}
	}
	w := &writer{c: c, of: 1, rng: rand.New(rand.NewPCG(c.o.seed, 1))}
	conn, err := pgx.Connect(ctx, c.pg.URL())
	if err != nil {
		return err
	}
	w.conn = conn
	defer conn.Close(context.Background())
	rec, err := w.sentinel(ctx)
	if err != nil {
		return fmt.Errorf("the sentinel transaction: %w", err)
	}
	var why string
	ok := waitFor(ctx, 2*time.Minute, func() bool {
		why = c.caughtUp(ctx, rec)
		return why == ""
	})
	if !ok && ctx.Err() == nil {
		// The checks still run: what the daemon left undone shows there.
		c.anomaly("the daemon did not catch up within 2 minutes of the sentinel transaction: %s", why)
	}
	return ctx.Err()
}

// readMachine says where the run ran, as the other scenarios do.
func (c *chaos) readMachine(ctx context.Context) (Machine, error) {
	conn, err := pgx.Connect(ctx, c.pg.URL())
	if err != nil {
		return Machine{}, err
	}
	defer conn.Close(context.Background())
	return (&env{conn: conn, rdb: c.targets[0].client}).readMachine(ctx)
}

// caughtUp says why the daemon has not caught up with rec; "" once it has.
func (c *chaos) caughtUp(ctx context.Context, rec *txRecord) string {
	var confirmed uint64
	if err := c.ctl.queryRow(ctx, `SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = $1`, []any{chaosSlot}, &confirmed); err != nil {
		return "read the slot: " + err.Error()
	}
	if confirmed < rec.after {
		return fmt.Sprintf("the slot is at %X, the sentinel committed at %X", confirmed, rec.after)
	}
	keys := make([]string, len(rec.keys))
	for i, k := range rec.keys {
		keys[i] = k.key
	}
	for _, t := range c.targets {
		vs, err := mget(ctx, t.client, keys)
		if err != nil {
			return fmt.Sprintf("read %s: %v", t.name, err)
		}
		for k, v := range vs {
			if _, snap, ok := cachedValue(v); !ok || !snap.sees(rec.xid) {
				return fmt.Sprintf("%s in %s still holds %q", k, t.name, v)
			}
		}
	}
	holder := c.slotHolder(ctx)
	if holder == nil {
		return "no daemon holds the slot"
	}
	m := scrapeMetrics(holder.metrics)
	if m == nil {
		return "no /metrics from daemon " + holder.name
	}
	if n := m["pg_invalidator_redeletes_pending"]; n != 0 {
		return fmt.Sprintf("%v re-deletes pending", n)
	}
	return ""
}

// sentinel commits an update of chaos_items row 0, which no writer owns,
// with its keys planted, and logs it like any other.
func (w *writer) sentinel(ctx context.Context) (*txRecord, error) {
	before := w.c.log.len()
	for range 10 {
		if err := w.transaction(ctx, func(ctx context.Context, tx pgx.Tx) ([]change, error) {
			ch, err := w.itemRow(ctx, tx, 0, true)
			return []change{ch}, err
		}); err != nil {
			return nil, err
		}
		if txs := w.c.log.since(before); len(txs) > 0 {
			return txs[len(txs)-1], nil
		}
	}
	return nil, errors.New("the sentinel row's update never committed")
}

// The run's log.

// step prints a progress line and logs it.
func (c *chaos) step(format string, args ...any) {
	c.line(true, format, args...)
}

// event logs a line, and prints it with -v.
func (c *chaos) event(format string, args ...any) {
	c.line(c.o.verbose, format, args...)
}

// debug logs a line only.
func (c *chaos) debug(format string, args ...any) {
	c.line(false, format, args...)
}

// anomaly logs and prints something that went wrong which the run did not
// cause; any fails the run.
func (c *chaos) anomaly(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.anomMu.Lock()
	c.anomalies = append(c.anomalies, fmt.Sprintf("[%7.1fs] %s", time.Since(c.t0).Seconds(), msg))
	c.anomMu.Unlock()
	c.line(true, "ANOMALY: %s", msg)
}

func (c *chaos) line(print bool, format string, args ...any) {
	l := fmt.Sprintf("[%7.1fs] %s\n", time.Since(c.t0).Seconds(), fmt.Sprintf(format, args...))
	c.logMu.Lock()
	defer c.logMu.Unlock()
	if c.logf != nil {
		c.logf.WriteString(time.Now().UTC().Format("15:04:05.000 ") + l)
	}
	if print {
		os.Stderr.WriteString(l)
	}
}

// close stops every daemon and server, and keeps the daemons' logs in the
// results directory.
func (c *chaos) close() {
	for _, u := range c.units {
		u.enable(false)
		if p, _ := u.running(); p != nil {
			p.stop()
		}
		if b, err := os.ReadFile(u.logPath); err == nil && c.out != "" {
			os.WriteFile(filepath.Join(c.out, filepath.Base(u.logPath)), b, 0o644)
		}
	}
	if c.pg != nil && c.out != "" {
		if b, err := os.ReadFile(filepath.Join(c.pg.Dir, "postgres.log")); err == nil {
			os.WriteFile(filepath.Join(c.out, "postgres.log"), b, 0o644)
		}
	}
	c.closeServers()
	if c.tmp != "" {
		os.RemoveAll(c.tmp)
	}
	c.logMu.Lock()
	if c.logf != nil {
		c.logf.Close()
		c.logf = nil
	}
	c.logMu.Unlock()
}

// tail returns the end of a log file.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return strings.TrimSpace(string(b))
}
