package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/raceload"
)

// The race scenario (go run ./bench race; make race) runs the cache-aside
// workload of internal/raceload against the daemon in the two races that
// invalidation alone leaves open, each with its remedy off and on:
//
//   - stale-set: readers read the row from the primary, pause, and SET it;
//     remedy redelete_after;
//   - replica: readers read the row from a streaming standby 200 ms behind
//     (recovery_min_apply_delay), and from one that is current; remedy
//     replicas = [that standby].
//
// Each run has its own database, slot and keys, and the daemon as a child
// process with its /metrics, from which the stale window (commit to
// applied) and the remedies' costs are read. After the run it updates a
// sentinel row and waits for its key to go and for no re-delete to be
// pending, then counts the cached entries whose value is not the row's.

// RaceResults is what one race run writes.
type RaceResults struct {
	Date         string     `json:"date"`
	Machine      Machine    `json:"machine"`
	LoadAvg      [2]string  `json:"loadavg"` // /proc/loadavg at the start and at the end
	Params       RaceParams `json:"params"`
	Runs         []RaceRun  `json:"runs"`
	TotalSeconds float64    `json:"total_seconds"`
}

// RaceParams are the workload's settings.
type RaceParams struct {
	Rows           int     `json:"rows"`
	Readers        int     `json:"readers"`
	ReadDelayMS    float64 `json:"read_delay_ms"`
	Writers        int     `json:"writers"`
	WritePauseMS   float64 `json:"write_pause_ms"`
	DurationS      float64 `json:"duration_s"`
	RedeleteAfter  string  `json:"redelete_after"`
	StandbyDelayMS float64 `json:"standby_delay_ms"`
	ReplicaTimeout string  `json:"replica_timeout"`
}

// RaceRun is one workload with one remedy setting.
type RaceRun struct {
	Workload string `json:"workload"`
	Remedy   string `json:"remedy"` // "none", or the setting
	Stale    int    `json:"stale"`
	Cached   int    `json:"cached"`
	Reads    int64  `json:"reads"`
	Hits     int64  `json:"hits"`
	Sets     int64  `json:"sets"`
	Writes   int64  `json:"writes"`
	// The stale window for a reader of the primary: from COMMIT to Redis
	// having applied the delete (pg_invalidator_commit_to_applied_seconds).
	WindowMeanMS float64 `json:"window_mean_ms"`
	WindowP99MS  float64 `json:"window_p99_ms"` // the histogram bucket bound
	// What the replica gate held each batch back (replica_wait_seconds).
	ReplicaWaitMeanMS float64 `json:"replica_wait_mean_ms,omitempty"`
	Redeletes         float64 `json:"redeletes,omitempty"`
	RedeletesFound    float64 `json:"redeletes_found,omitempty"`
}

type raceOptions struct {
	rows, readers, writers int
	readDelay, writePause  time.Duration
	duration               time.Duration
	redelete               time.Duration
	standbyDelay           time.Duration
	outDir                 string
	publish                bool
	notFull                []string
}

func raceMain(args []string) int {
	var o raceOptions
	fs := flag.NewFlagSet("bench race", flag.ContinueOnError)
	fs.IntVar(&o.rows, "rows", 200, "rows the readers and writers pick from")
	fs.IntVar(&o.readers, "readers", 8, "cache-aside readers")
	fs.DurationVar(&o.readDelay, "read-delay", 5*time.Millisecond, "each reader's pause between the row's read and the SET")
	fs.IntVar(&o.writers, "writers", 2, "writers updating random rows")
	fs.DurationVar(&o.writePause, "write-pause", 5*time.Millisecond, "each writer's pause between updates")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each run")
	fs.DurationVar(&o.redelete, "redelete-after", 500*time.Millisecond, "redelete_after of the stale-set remedy")
	fs.DurationVar(&o.standbyDelay, "standby-delay", 200*time.Millisecond, "recovery_min_apply_delay of the lagging standby")
	fs.StringVar(&o.outDir, "out", "", "directory for the JSON (default: bench/results/race for a run with default flags, else bench/results/local/race)")
	fs.BoolVar(&o.publish, "publish", false, "replace bench/results/race/latest.json even though flags differ from the defaults")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: go run ./bench race [flags]

Runs the stale-set and the replica workloads against the daemon, each with
its remedy off and on, on a private PostgreSQL with two standbys and a
private Redis, and reports stale entries, cache hits, writes and the stale
window of each. A run with the default flags replaces
bench/results/race/latest.json (the run it replaces moves beside it, named
for its date); any other run writes bench/results/local/race/<date>.json.

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
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "out" && f.Name != "publish" && f.Value.String() != f.DefValue {
			o.notFull = append(o.notFull, "-"+f.Name+"="+f.Value.String())
		}
	})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runRace(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench race:", err)
		return 1
	}
	return 0
}

// raceEnv is the servers and the binary of a race run.
type raceEnv struct {
	o        raceOptions
	tmp      string
	daemon   string
	pg       *localsvc.Postgres
	current  *localsvc.Postgres // a standby, replaying as fast as it can
	lagging  *localsvc.Postgres // a standby, replaying o.standbyDelay late
	redis    *localsvc.Redis
	conn     *pgx.Conn
	rdb      *redis.Client
	t0       time.Time
	runCount int
}

func (e *raceEnv) step(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%7.1fs] %s\n", time.Since(e.t0).Seconds(), fmt.Sprintf(format, args...))
}

func runRace(ctx context.Context, o raceOptions) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	publish := o.publish || len(o.notFull) == 0
	dir := o.outDir
	if dir == "" {
		dir = filepath.Join(root, "bench", "results", "race")
		if !publish {
			dir = filepath.Join(root, "bench", "results", "local", "race")
		}
	}
	start := time.Now()
	e := &raceEnv{o: o, t0: start}
	defer e.close()
	if err := e.setup(ctx, root); err != nil {
		return err
	}
	res := &RaceResults{Date: start.UTC().Format(time.RFC3339), LoadAvg: [2]string{loadAvgText()},
		Params: RaceParams{Rows: o.rows, Readers: o.readers, ReadDelayMS: ms(o.readDelay), Writers: o.writers,
			WritePauseMS: ms(o.writePause), DurationS: o.duration.Seconds(), RedeleteAfter: o.redelete.String(),
			StandbyDelayMS: ms(o.standbyDelay), ReplicaTimeout: "5s"}}
	if res.Machine, err = (&env{conn: e.conn, rdb: e.rdb}).readMachine(ctx); err != nil {
		return err
	}
	printMachine(os.Stdout, res.Machine)

	lagName := fmt.Sprintf("replica (standby %s behind)", o.standbyDelay)
	for _, r := range []struct {
		workload, remedy string
		read             *localsvc.Postgres
		rule, postgres   string
	}{
		{"stale-set", "none", e.pg, "", ""},
		{"stale-set", "redelete_after " + o.redelete.String(), e.pg, fmt.Sprintf("redelete_after = %q\n", o.redelete.String()), ""},
		{lagName, "none", e.lagging, "", ""},
		{lagName, `replicas = ["lagging"]`, e.lagging, "", `replicas = ["lagging"]` + "\n"},
		{"replica (standby current)", "none", e.current, "", ""},
		{"replica (standby current)", `replicas = ["current"]`, e.current, "", `replicas = ["current"]` + "\n"},
	} {
		e.step("%s, remedy %s: %s", r.workload, r.remedy, o.duration)
		run, err := e.run(ctx, r.read, r.rule, r.postgres)
		if err != nil {
			return fmt.Errorf("%s, %s: %w", r.workload, r.remedy, err)
		}
		run.Workload, run.Remedy = r.workload, r.remedy
		res.Runs = append(res.Runs, run)
	}
	res.LoadAvg[1] = loadAvgText()
	res.TotalSeconds = time.Since(start).Seconds()
	printRace(os.Stdout, res)
	return saveRace(os.Stdout, dir, publish, o.notFull, res, start)
}

func (e *raceEnv) setup(ctx context.Context, root string) error {
	var err error
	if e.tmp, err = os.MkdirTemp("", "pginv-race-"); err != nil {
		return err
	}
	e.step("building pg-invalidator")
	if e.daemon, err = buildDaemon(ctx, root, e.tmp); err != nil {
		return err
	}
	e.step("starting PostgreSQL, two standbys (one %s behind) and Redis", e.o.standbyDelay)
	if e.pg, err = localsvc.StartPostgres(ctx, localsvc.PostgresOptions{}); err != nil {
		return err
	}
	if e.current, err = localsvc.StartStandby(ctx, e.pg, localsvc.StandbyOptions{Name: "current"}); err != nil {
		return err
	}
	if e.lagging, err = localsvc.StartStandby(ctx, e.pg, localsvc.StandbyOptions{Name: "lagging",
		Settings: []string{fmt.Sprintf("recovery_min_apply_delay=%dms", e.o.standbyDelay.Milliseconds())}}); err != nil {
		return err
	}
	if e.redis, err = localsvc.StartRedis(ctx); err != nil {
		return err
	}
	if e.conn, err = pgx.Connect(ctx, e.pg.URL()); err != nil {
		return err
	}
	e.rdb = newRedisClient(e.redis.Addr())
	return nil
}

func (e *raceEnv) close() {
	if e.rdb != nil {
		e.rdb.Close()
	}
	if e.conn != nil {
		e.conn.Close(context.Background())
	}
	for _, s := range []*localsvc.Postgres{e.current, e.lagging, e.pg} {
		if s != nil {
			s.Close()
		}
	}
	if e.redis != nil {
		e.redis.Close()
	}
	if e.tmp != "" {
		os.RemoveAll(e.tmp)
	}
}

// run runs the workload once, readers reading from read, with rule added
// to the [[rule]] and postgres to [postgres].
func (e *raceEnv) run(ctx context.Context, read *localsvc.Postgres, rule, postgres string) (RaceRun, error) {
	e.runCount++
	n := e.runCount
	db, slot, prefix := fmt.Sprintf("race_%d", n), fmt.Sprintf("race_%d", n), fmt.Sprintf("race:%d:", n)
	if _, err := e.conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return RaceRun{}, err
	}
	dbURL := strings.Replace(e.pg.URL(), "/postgres?", "/"+db+"?", 1)
	readURL := strings.Replace(read.URL(), "/postgres?", "/"+db+"?", 1)
	sentinel := e.o.rows + 1
	if err := execOn(ctx, dbURL, raceload.Schema(e.o.rows), fmt.Sprintf("INSERT INTO race_items (id) VALUES (%d)", sentinel)); err != nil {
		return RaceRun{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.conn.Exec(cctx, "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1", slot)
		e.conn.Exec(cctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	}()
	if err := e.waitStandbys(ctx); err != nil {
		return RaceRun{}, err
	}

	port, err := localsvc.FreePort()
	if err != nil {
		return RaceRun{}, err
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", port)
	rules := filepath.Join(e.tmp, db+".toml")
	if err := os.WriteFile(rules, []byte(fmt.Sprintf(`[postgres]
slot = %q
%s
[[rule]]
table = "race_items"
del = ["%sitem:<id>"]
%s`, slot, postgres, prefix, rule)), 0o644); err != nil {
		return RaceRun{}, err
	}
	d, err := startChild(e.daemon, filepath.Join(e.tmp, db+".log"), "run", "--config", rules, "--postgres", dbURL,
		"--redis", e.redis.URL(), "--metrics-addr", metrics)
	if err != nil {
		return RaceRun{}, err
	}
	defer d.stop()
	if err := waitUntil(ctx, d, 60*time.Second, "the daemon streams", func() bool {
		code, _ := httpGetBody(metrics, "/readyz")
		return code == http.StatusOK
	}); err != nil {
		return RaceRun{}, err
	}

	counts, err := raceload.Run(ctx, raceload.Options{WriteURL: dbURL, ReadURL: readURL, Redis: e.rdb, Prefix: prefix,
		Rows: e.o.rows, Readers: e.o.readers, ReadDelay: e.o.readDelay, Writers: e.o.writers, WritePause: e.o.writePause,
		Duration: e.o.duration})
	if err != nil {
		return RaceRun{}, err
	}
	// Quiesce: the sentinel's delete is applied once everything before it
	// is, and no re-delete is pending once the gauge says so.
	key := raceload.Key(prefix, sentinel)
	if err := e.rdb.Set(ctx, key, "x", time.Hour).Err(); err != nil {
		return RaceRun{}, err
	}
	if err := execOn(ctx, dbURL, fmt.Sprintf("UPDATE race_items SET v = v + 1 WHERE id = %d", sentinel)); err != nil {
		return RaceRun{}, err
	}
	var m map[string]float64
	if err := waitUntil(ctx, d, 60*time.Second, "every invalidation is applied", func() bool {
		if e.rdb.Exists(ctx, key).Val() != 0 {
			return false
		}
		m = scrapeMetrics(metrics)
		return m != nil && m["pg_invalidator_redeletes_pending"] == 0
	}); err != nil {
		return RaceRun{}, err
	}
	stale, cached, err := raceload.Stale(ctx, dbURL, e.rdb, prefix)
	if err != nil {
		return RaceRun{}, err
	}
	run := RaceRun{Stale: stale, Cached: cached, Reads: counts.Reads, Hits: counts.Hits, Sets: counts.Sets, Writes: counts.Writes,
		Redeletes:      m[`pg_invalidator_redeletes_total{target="default"}`],
		RedeletesFound: m[`pg_invalidator_redeletes_found_total{target="default"}`]}
	run.WindowMeanMS, run.WindowP99MS = histogram(m, "pg_invalidator_commit_to_applied_seconds")
	run.ReplicaWaitMeanMS, _ = histogram(m, "pg_invalidator_replica_wait_seconds")
	return run, nil
}

// waitStandbys waits until both standbys have replayed what the primary
// has written, so that a new database is there to read from.
func (e *raceEnv) waitStandbys(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		var behind int
		err := e.conn.QueryRow(ctx, `SELECT 2 - count(*) FROM pg_stat_replication WHERE replay_lsn >= pg_current_wal_lsn()`).Scan(&behind)
		if err != nil {
			return err
		}
		if behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the standbys did not catch up within 60s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func execOn(ctx context.Context, url string, sqls ...string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", firstLine(sql), err)
		}
	}
	return nil
}

// waitUntil polls cond until it holds, the daemon d exits, or timeout.
func waitUntil(ctx context.Context, d *child, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if d.exited() {
			return fmt.Errorf("the daemon exited before %s: %s", what, d.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not %s after %s; the daemon's log ends: %s", what, timeout, d.tail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func httpGetBody(addr, path string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrapeMetrics returns the samples of /metrics at addr by series, as the
// text format writes them; nil when it cannot be read.
func scrapeMetrics(addr string) map[string]float64 {
	code, body := httpGetBody(addr, "/metrics")
	if code != http.StatusOK {
		return nil
	}
	out := make(map[string]float64)
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// histogram returns a histogram's mean and the upper bound of the bucket
// that holds its 99th percentile, in milliseconds; zeros when it is empty.
func histogram(m map[string]float64, name string) (meanMS, p99MS float64) {
	count := m[name+"_count"]
	if count == 0 {
		return 0, 0
	}
	type bucket struct{ le, n float64 }
	var bs []bucket
	for k, v := range m {
		le, ok := strings.CutPrefix(k, name+`_bucket{le="`)
		if !ok {
			continue
		}
		bound, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64)
		if err == nil {
			bs = append(bs, bucket{bound, v})
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	p99MS = math.Inf(1)
	for _, b := range bs {
		if b.n >= 0.99*count {
			p99MS = b.le * 1000
			break
		}
	}
	return m[name+"_sum"] / count * 1000, p99MS
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// loadAvgText returns the first three fields of /proc/loadavg; empty elsewhere.
func loadAvgText() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func printRace(w io.Writer, r *RaceResults) {
	p := r.Params
	fmt.Fprintf(w, "\n%d readers (%.0f ms between the read and the SET), %d writers (%.0f ms apart), %d rows, %.0f s per run; load average %s at the start, %s at the end\n\n",
		p.Readers, p.ReadDelayMS, p.Writers, p.WritePauseMS, p.Rows, p.DurationS, r.LoadAvg[0], r.LoadAvg[1])
	fmt.Fprintf(w, "%-30s %-24s %12s %9s %8s %14s %12s %12s %s\n",
		"workload", "remedy", "stale/cached", "hit rate", "writes", "window mean", "window p99", "gate mean", "re-deletes (found)")
	for _, run := range r.Runs {
		hit := 0.0
		if run.Reads > 0 {
			hit = 100 * float64(run.Hits) / float64(run.Reads)
		}
		redel := ""
		if run.Redeletes > 0 {
			redel = fmt.Sprintf("%.0f (%.0f)", run.Redeletes, run.RedeletesFound)
		}
		gate := ""
		if run.ReplicaWaitMeanMS > 0 {
			gate = fmt.Sprintf("%.1f ms", run.ReplicaWaitMeanMS)
		}
		fmt.Fprintf(w, "%-30s %-24s %12s %8.1f%% %8d %11.1f ms %9s ms %12s %s\n", run.Workload, run.Remedy,
			fmt.Sprintf("%d/%d", run.Stale, run.Cached), hit, run.Writes, run.WindowMeanMS, fmtBound(run.WindowP99MS), gate, redel)
	}
	fmt.Fprintln(w)
}

func fmtBound(v float64) string {
	if math.IsInf(v, 1) {
		return "> 300000"
	}
	return "≤ " + strconv.FormatFloat(v, 'f', -1, 64)
}

// saveRace writes r: with publish, as dir/latest.json, the run it replaces
// moving to dir/<its date>.json; otherwise as dir/<date>.json.
func saveRace(w io.Writer, dir string, publish bool, notFull []string, r *RaceResults, start time.Time) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("make results directory: %w", err)
	}
	if !publish {
		path := filepath.Join(dir, fileStamp(start)+".json")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(w, "results: %s\nNot a run with the default flags (%s), so bench/results/race/latest.json is unchanged; -publish replaces it.\n",
			path, strings.Join(notFull, " "))
		return nil
	}
	archived, err := publishJSON(dir, b)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "results: %s\n", filepath.Join(dir, latestName))
	if archived != "" {
		fmt.Fprintf(w, "         the run it replaced is now %s\n", archived)
	}
	return nil
}
