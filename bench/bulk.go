package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
)

// The bulk scenario: one UPDATE of every row of a table, every key cached,
// the daemon live on its own slot. What it measures is what a reader sees:
// how long after the UPDATE's COMMIT returned the last key is gone.

// Bulk is one condition of the bulk scenario, run -runs times.
type Bulk struct {
	Condition string    `json:"condition"` // e.g. "1000000 rows, item:<id>, streaming"
	Rows      int       `json:"rows"`
	Template  string    `json:"template"` // bulk:<id> on REPLICA IDENTITY DEFAULT, bulkcat:<cat> on FULL
	Streaming bool      `json:"streaming"`
	WorkMem   string    `json:"logical_decoding_work_mem"` // the daemon's; "" for the floor
	Keys      int       `json:"keys"`                      // the keys the UPDATE invalidates
	Runs      []BulkRun `json:"runs"`
	Median    BulkRun   `json:"median"` // by stale seconds
}

// BulkRun is one run of a bulk condition.
type BulkRun struct {
	UpdateSeconds float64 `json:"update_s"`        // the UPDATE, COMMIT included
	StaleSeconds  float64 `json:"stale_s"`         // COMMIT returned → the last key gone (the floor: the delete alone)
	PeakRSSKB     int64   `json:"peak_rss_kb"`     // the daemon's
	SpillBytes    int64   `json:"spill_bytes"`     // the slot's, pg_stat_replication_slots
	StreamBytes   int64   `json:"stream_bytes"`    // the same
	LoadAvg       float64 `json:"load_avg_1m"`     // when the run began
	DaemonCPU     float64 `json:"daemon_cpu_s"`    // user + system, the whole run
	WalsenderCPU  float64 `json:"walsender_cpu_s"` // user + system, from the UPDATE to the last key gone
	// ApplySeconds is, for a streamed transaction, how long the daemon
	// took from its stream commit to Redis having applied its keys, as its
	// debug log says ("handed_over_in"); 0 otherwise.
	ApplySeconds float64 `json:"apply_s,omitempty"`
}

// bulkTemplates are the two shapes of rule the scenario runs: a key per
// row, and every row on one of a few keys.
var bulkTemplates = []string{"bulk:<id>", "bulkcat:<cat>"}

// bulk runs the bulk scenario for each size of -bulk-rows.
func (e *env) bulk(ctx context.Context) ([]Bulk, error) {
	var out []Bulk
	for _, rows := range e.o.bulkRows {
		b, err := e.bulkSize(ctx, rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

// bulkSize runs every condition of one table size, interleaved run by run:
// the daemon with streaming, one key per row; the same without streaming
// (protocol 1: the yardstick); streaming, every row on one of categories
// keys; and the floor, the keys deleted straight from Redis, 100 a UNLINK.
func (e *env) bulkSize(ctx context.Context, rows int) ([]Bulk, error) {
	table := fmt.Sprintf("bulk_%d", rows)
	e.step("bulk: loading %d rows into %s", rows, table)
	for _, sql := range []string{
		`DROP PUBLICATION IF EXISTS bench_bulk`,
		fmt.Sprintf(`DROP TABLE IF EXISTS %s`, table),
		fmt.Sprintf(`CREATE TABLE %s (id bigint PRIMARY KEY, cat int NOT NULL, v bigint NOT NULL)`, table),
		fmt.Sprintf(`INSERT INTO %s SELECT g, g %% %d, 0 FROM generate_series(1, %d) g`, table, categories, rows),
		fmt.Sprintf(`CREATE PUBLICATION bench_bulk FOR TABLE %s`, table),
		fmt.Sprintf(`VACUUM (FREEZE, ANALYZE) %s`, table),
		`CHECKPOINT`,
	} {
		if _, err := e.conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("bulk: %s: %w", firstLine(sql), err)
		}
	}
	defer e.conn.Exec(context.Background(), fmt.Sprintf(`DROP TABLE IF EXISTS %s`, table))

	conds := []Bulk{
		{Condition: fmt.Sprintf("%d rows, %s, streaming", rows, bulkTemplates[0]), Template: bulkTemplates[0], Streaming: true, Keys: rows},
		{Condition: fmt.Sprintf("%d rows, %s, protocol 1", rows, bulkTemplates[0]), Template: bulkTemplates[0], Keys: rows},
		{Condition: fmt.Sprintf("%d rows, %s, streaming", rows, bulkTemplates[1]), Template: bulkTemplates[1], Streaming: true, Keys: categories},
		{Condition: fmt.Sprintf("%d keys deleted straight from Redis, %d a UNLINK (the floor)", rows, unlinkPerCommand), Keys: rows},
	}
	for i := range conds {
		conds[i].Rows = rows
		if conds[i].Template != "" {
			conds[i].WorkMem = e.o.workMem
		}
	}
	for run := range e.o.runs {
		for i := range conds {
			c := &conds[i]
			e.step("bulk: %s, run %d of %d", c.Condition, run+1, e.o.runs)
			var r BulkRun
			var err error
			if c.Template == "" {
				r, err = e.bulkFloor(ctx, rows)
			} else {
				r, err = e.bulkRun(ctx, table, *c, run)
			}
			if err != nil {
				return nil, fmt.Errorf("bulk: %s: %w", c.Condition, err)
			}
			c.Runs = append(c.Runs, r)
			e.step("bulk: %s: stale %.2f s, UPDATE %.2f s, peak RSS %.0f MB, spilled %.0f MB, streamed %.0f MB, CPU daemon %.2f s walsender %.2f s",
				c.Condition, r.StaleSeconds, r.UpdateSeconds, float64(r.PeakRSSKB)/1024, float64(r.SpillBytes)/1e6, float64(r.StreamBytes)/1e6,
				r.DaemonCPU, r.WalsenderCPU)
		}
	}
	for i := range conds {
		runs := slices.Clone(conds[i].Runs)
		slices.SortFunc(runs, func(a, b BulkRun) int { return cmp.Compare(a.StaleSeconds, b.StaleSeconds) })
		conds[i].Median = runs[len(runs)/2]
	}
	return conds, nil
}

// unlinkPerCommand is how many keys one UNLINK of the floor deletes.
const unlinkPerCommand = 100

// bulkKeys sets the keys template renders from rows rows, on a Redis
// emptied first, and returns them.
func bulkKeys(template string, rows int) []string {
	var keys []string
	switch template {
	case bulkTemplates[1]:
		for c := range categories {
			keys = append(keys, "bulkcat:"+strconv.Itoa(c))
		}
	default:
		keys = make([]string, 0, rows)
		for id := 1; id <= rows; id++ {
			keys = append(keys, "bulk:"+strconv.Itoa(id))
		}
	}
	return keys
}

// setKeys empties rdb and sets keys, in pipelines.
func setKeys(ctx context.Context, rdb *redis.Client, keys []string) error {
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		return fmt.Errorf("flush redis: %w", err)
	}
	for i := 0; i < len(keys); i += 10_000 {
		p := rdb.Pipeline()
		for _, k := range keys[i:min(i+10_000, len(keys))] {
			p.Set(ctx, k, "1", 0)
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("populate redis: %w", err)
		}
	}
	return nil
}

// bulkRun runs the daemon live on a slot of its own, then one UPDATE of
// every row of table, and times the keys' deletion from the COMMIT.
func (e *env) bulkRun(ctx context.Context, table string, c Bulk, run int) (BulkRun, error) {
	keys := bulkKeys(c.Template, c.Rows)
	if err := setKeys(ctx, e.rdb, keys); err != nil {
		return BulkRun{}, err
	}
	// A key per row needs the primary key alone; a rule on cat needs its
	// old value on update, and so the whole old row.
	identity := "DEFAULT"
	if c.Template == bulkTemplates[1] {
		identity = "FULL"
	}
	if _, err := e.conn.Exec(ctx, fmt.Sprintf(`ALTER TABLE %s REPLICA IDENTITY %s`, table, identity)); err != nil {
		return BulkRun{}, err
	}
	slot := fmt.Sprintf("bench_bulk_%d", run)
	e.dropSlot(ctx, slot)
	rules := filepath.Join(e.tmp, slot+".toml")
	streaming := "true"
	if !c.Streaming {
		streaming = "false"
	}
	workMem := ""
	if c.WorkMem != "" {
		workMem = fmt.Sprintf("logical_decoding_work_mem = %q\n", c.WorkMem)
	}
	body := fmt.Sprintf("[postgres]\nslot = %q\npublication = \"bench_bulk\"\ncanary_key = \"\"\nstreaming = %s\n%s\n[[rule]]\ntable = %q\ndel = [%q]\n",
		slot, streaming, workMem, "public."+table, c.Template)
	if err := os.WriteFile(rules, []byte(body), 0o644); err != nil {
		return BulkRun{}, err
	}
	// At debug level the daemon logs how long a streamed transaction's
	// commit took to apply; a debug line per transaction costs nothing
	// here, where there is one.
	args := []string{"run", "--config", rules, "--postgres", e.pg.URL(), "--redis", e.redis.URL(), "--log-level", "debug"}
	logPath := filepath.Join(e.tmp, slot+".log")
	ch, err := startChild(e.daemon, logPath, args...)
	if err != nil {
		return BulkRun{}, err
	}
	defer func() {
		ch.stop()
		e.dropSlot(context.Background(), slot)
		if e.o.verbose { // kept for a look at the daemon's timeline
			keep := filepath.Join(os.TempDir(), fmt.Sprintf("pginv-bulk-%d-%s-%v-%d.log", c.Rows, strings.NewReplacer(":", "", "<", "", ">", "").Replace(c.Template), c.Streaming, run))
			if b, err := os.ReadFile(logPath); err == nil {
				os.WriteFile(keep, b, 0o644)
				e.logf("bulk: the daemon's log is in %s", keep)
			}
		}
	}()
	if err := e.waitStreaming(ctx, slot, ch); err != nil {
		return BulkRun{}, err
	}
	// Counted once the daemon has set its notes (the slot's marker, the
	// catalog reading) beside the keys.
	base, err := e.rdb.DBSize(ctx).Result()
	if err != nil {
		return BulkRun{}, err
	}
	if _, err := e.conn.Exec(ctx, `SELECT pg_stat_reset_replication_slot($1)`, slot); err != nil {
		return BulkRun{}, err
	}
	r := BulkRun{LoadAvg: loadAvg()}
	_, walsender, err := e.slotState(ctx, slot)
	if err != nil {
		return BulkRun{}, err
	}
	ws0, _ := readProc(walsender)
	began := time.Now()
	if _, err := e.conn.Exec(ctx, fmt.Sprintf(`UPDATE %s SET v = v + 1`, table)); err != nil {
		return BulkRun{}, err
	}
	committed := time.Now()
	r.UpdateSeconds = committed.Sub(began).Seconds()
	e.logf("bulk: COMMIT returned at %s", committed.UTC().Format("15:04:05.000"))
	want := base - int64(len(keys))
	for {
		n, err := e.rdb.DBSize(ctx).Result()
		if err != nil {
			return BulkRun{}, err
		}
		if n <= want {
			break
		}
		if ch.exited() {
			return BulkRun{}, ch.failure()
		}
		if time.Since(committed) > 5*time.Minute {
			return BulkRun{}, fmt.Errorf("%d of %d keys still cached 5 minutes after the COMMIT", n-want, len(keys))
		}
		time.Sleep(2 * time.Millisecond)
	}
	r.StaleSeconds = time.Since(committed).Seconds()
	if ws1, ok := readProc(walsender); ok {
		r.WalsenderCPU = ws1.cpu - ws0.cpu
	}
	r.ApplySeconds = appliedIn(logPath)
	if p, ok := readProc(ch.pid()); ok {
		r.PeakRSSKB, r.DaemonCPU = p.hwmKB, p.cpu
	}
	err = e.conn.QueryRow(ctx, `SELECT spill_bytes, stream_bytes FROM pg_stat_replication_slots WHERE slot_name = $1`, slot).
		Scan(&r.SpillBytes, &r.StreamBytes)
	return r, err
}

// appliedIn returns the handed_over_in of the daemon's last "streamed
// transaction committed" line in the log at path, in seconds; 0 when
// there is none.
func appliedIn(path string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var d time.Duration
	for line := range strings.Lines(string(b)) {
		if !strings.Contains(line, "streamed transaction committed") {
			continue
		}
		if _, v, ok := strings.Cut(line, "handed_over_in="); ok {
			if x, err := time.ParseDuration(strings.Fields(v)[0]); err == nil {
				d = x
			}
		}
	}
	return d.Seconds()
}

// waitStreaming waits until a walsender streams from slot, for ch.
func (e *env) waitStreaming(ctx context.Context, slot string, ch *child) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		var active bool
		err := e.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = $1 AND r.state IN ('catchup', 'streaming'))`, slot).Scan(&active)
		switch {
		case err != nil:
			return err
		case active:
			return nil
		case ch.exited():
			return ch.failure()
		case time.Now().After(deadline):
			return fmt.Errorf("slot %s not streamed from within 60 s", slot)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bulkFloor times Redis deleting the keys alone: pipelines of UNLINK with
// unlinkPerCommand keys each, 10,000 keys a pipeline.
func (e *env) bulkFloor(ctx context.Context, rows int) (BulkRun, error) {
	keys := bulkKeys(bulkTemplates[0], rows)
	if err := setKeys(ctx, e.rdb, keys); err != nil {
		return BulkRun{}, err
	}
	r := BulkRun{LoadAvg: loadAvg()}
	start := time.Now()
	for i := 0; i < len(keys); i += 10_000 {
		p := e.rdb.Pipeline()
		batch := keys[i:min(i+10_000, len(keys))]
		for j := 0; j < len(batch); j += unlinkPerCommand {
			p.Unlink(ctx, batch[j:min(j+unlinkPerCommand, len(batch))]...)
		}
		if _, err := p.Exec(ctx); err != nil {
			return BulkRun{}, fmt.Errorf("unlink: %w", err)
		}
	}
	r.StaleSeconds = time.Since(start).Seconds()
	return r, nil
}

// printBulk prints the bulk table: the median run of each condition, and
// every run's stale seconds.
func printBulk(w io.Writer, bs []Bulk) {
	if len(bs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "bulk\tkeys\tstale s\tof which applying s\tUPDATE s\tpeak RSS MB\tspill MB\tstreamed MB\tdaemon CPU s\twalsender CPU s\tevery run: stale s\t")
	for _, b := range bs {
		var all []string
		for _, r := range b.Runs {
			all = append(all, fmt.Sprintf("%.2f", r.StaleSeconds))
		}
		m := b.Median
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", b.Condition, b.Keys, m.StaleSeconds,
			blankZero(m.ApplySeconds, "%.2f"), blankZero(m.UpdateSeconds, "%.2f"), blankZero(float64(m.PeakRSSKB)/1024, "%.1f"),
			blankZero(float64(m.SpillBytes)/1e6, "%.1f"), blankZero(float64(m.StreamBytes)/1e6, "%.1f"),
			blankZero(m.DaemonCPU, "%.2f"), blankZero(m.WalsenderCPU, "%.2f"), strings.Join(all, " "))
	}
	tw.Flush()
	fmt.Fprintln(w)
}
