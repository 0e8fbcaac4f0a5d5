package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"
)

// CatchUp is one catch-up scenario: a backlog written while nothing
// consumed it, then each contender alone on its own copy of the slot.
type CatchUp struct {
	Scenario     string  `json:"scenario"`
	Backlog      string  `json:"backlog"`
	Transactions int     `json:"transactions"` // the sentinel transaction included
	Rows         int     `json:"rows"`         // row changes, the sentinel's included
	WALBytes     int64   `json:"wal_bytes"`    // from the slot's start to the last commit's end
	BuildSeconds float64 `json:"build_seconds"`
	EndLSN       string  `json:"end_lsn"`
	Runs         []Run   `json:"runs"`
}

// Run is one contender's time on one backlog.
type Run struct {
	Contender string  `json:"contender"`
	Seconds   float64 `json:"seconds"`
	Ratio     float64 `json:"ratio_to_decode"`
	// ClientCPU is the contender process's user + system time; zero for decode.
	ClientCPU float64 `json:"client_cpu_seconds,omitempty"`
	// ServerCPU is the PostgreSQL backend's (decode) or walsender's user +
	// system time, sampled every 50 ms, so slightly low for pg_recvlogical,
	// whose walsender exits with it.
	ServerCPU float64 `json:"server_cpu_seconds"`
	// RedisCPU is what Redis spent meanwhile (INFO cpu).
	RedisCPU float64 `json:"redis_cpu_seconds,omitempty"`
	// PeakRSSKB is the contender's VmHWM just before it was stopped.
	PeakRSSKB int64 `json:"peak_rss_kb,omitempty"`
	// Messages is the number of pgoutput messages decoded; decode only.
	Messages int64 `json:"messages,omitempty"`
	// AllSeconds holds every run's time when the contender ran more than
	// once (-runs); the row is the run with the median time.
	AllSeconds []float64 `json:"all_seconds,omitempty"`
}

// Contenders, in the order they run.
const (
	cDecode      = "decode"
	cRecvlogical = "pg_recvlogical"
	cBaseline    = "baseline"
	cDaemon      = "daemon"
	// cDaemonCluster is the daemon against a Redis Cluster (-cluster).
	cDaemonCluster = "daemon (cluster)"
)

var allContenders = []string{cDecode, cRecvlogical, cBaseline, cDaemon}

// catchup creates a slot, writes a backlog with build, ends it with the
// sentinel transaction, copies the slot once per contender and times each.
func (e *env) catchup(ctx context.Context, name, backlog string, build func(context.Context) (txs, rows int, err error)) (*CatchUp, error) {
	src := "bench_" + name
	startLSN, err := e.createSlot(ctx, src)
	if err != nil {
		return nil, err
	}
	e.step("%s: writing the backlog: %s", name, backlog)
	t := time.Now()
	txs, rows, err := build(ctx)
	if err != nil {
		return nil, fmt.Errorf("write backlog: %w", err)
	}
	if _, err := e.conn.Exec(ctx, `UPDATE items SET v = v + 1 WHERE id = $1`, sentinelID); err != nil {
		return nil, fmt.Errorf("sentinel update: %w", err)
	}
	sc := &CatchUp{Scenario: name, Backlog: backlog, Transactions: txs + 1, Rows: rows + 1, BuildSeconds: time.Since(t).Seconds()}
	e.step("%s: backlog written in %.1fs", name, sc.BuildSeconds)

	var contenders []string
	for _, c := range allContenders {
		if !e.skipped(c) {
			contenders = append(contenders, c)
		}
	}
	if e.o.cluster {
		if err := e.startCluster(ctx); err != nil {
			return nil, err
		}
		contenders = append(contenders, cDaemonCluster)
	}
	// Every run of a streaming contender needs its own copy of the slot;
	// decode only peeks, so its runs share one.
	runsOf := func(c string) int {
		if c == cDecode || c == cBaseline {
			return 1 // the baseline is slow and far off: once is enough
		}
		return e.o.runs
	}
	copies := map[string][]string{}
	for _, c := range contenders {
		for i := range runsOf(c) {
			n := fmt.Sprintf("%s_%s_%d", src, strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(c), i+1)
			if err := e.copySlot(ctx, src, n); err != nil {
				return nil, err
			}
			copies[c] = append(copies[c], n)
		}
	}
	if err := e.dropSlot(ctx, src); err != nil {
		return nil, err
	}
	defer func() {
		for _, slots := range copies {
			for _, s := range slots {
				e.dropSlot(context.Background(), s)
			}
		}
	}()

	// 1. The server's own decoding. It also says where the last commit ends.
	var decodes []Run
	var end pglogrepl.LSN
	for i := range e.o.runs {
		e.step("%s: %s, run %d of %d", name, cDecode, i+1, e.o.runs)
		r, lsn, err := e.runDecode(ctx, copies[cDecode][0])
		if err != nil {
			return nil, err
		}
		decodes, end = append(decodes, r), lsn
		e.step("%s: %s took %.2fs (%d messages)", name, cDecode, r.Seconds, r.Messages)
	}
	decode := median(decodes)
	sc.EndLSN = end.String()
	sc.WALBytes = int64(end - startLSN)
	sc.Runs = append(sc.Runs, decode)
	e.step("%s: %s median %.2fs (%.0f MB of WAL)", name, cDecode, decode.Seconds, float64(sc.WALBytes)/1e6)

	// 2-5. The streaming contenders, each alone, each run on its own copy.
	for _, c := range contenders[1:] {
		var runs []Run
		for i, slot := range copies[c] {
			e.step("%s: %s, run %d of %d", name, c, i+1, len(copies[c]))
			var r Run
			var err error
			switch c {
			case cRecvlogical:
				r, err = e.runRecvlogical(ctx, slot, end)
			case cBaseline:
				r, err = e.runConsumer(ctx, e.rdb, c, slot, end, e.baselineArgs(slot, e.redis.URL()))
			case cDaemon:
				var args []string
				args, err = e.daemonArgs(slot, e.redis.URL())
				if err == nil {
					r, err = e.runConsumer(ctx, e.rdb, c, slot, end, args)
				}
			case cDaemonCluster:
				var args []string
				args, err = e.daemonClusterArgs(slot)
				if err == nil {
					r, err = e.runConsumer(ctx, e.crdb, c, slot, end, args)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c, err)
			}
			e.step("%s: %s took %.2fs (%.2f× decode)", name, c, r.Seconds, r.Seconds/decode.Seconds)
			runs = append(runs, r)
		}
		r := median(runs)
		r.Ratio = r.Seconds / decode.Seconds
		sc.Runs = append(sc.Runs, r)
	}
	return sc, nil
}

// median returns the run with the median time, with every run's time in
// AllSeconds when there was more than one. Its peak RSS is the highest of
// all runs, so that the memory target is checked against the worst.
func median(runs []Run) Run {
	sorted := slices.SortedFunc(slices.Values(runs), func(a, b Run) int { return cmp.Compare(a.Seconds, b.Seconds) })
	m := sorted[(len(sorted)-1)/2]
	if len(runs) > 1 {
		m.AllSeconds = nil
		for _, r := range runs {
			m.AllSeconds = append(m.AllSeconds, r.Seconds)
			m.PeakRSSKB = max(m.PeakRSSKB, r.PeakRSSKB)
		}
	}
	return m
}

// skipped reports whether -skip names contender c.
func (e *env) skipped(c string) bool {
	for s := range strings.SplitSeq(e.o.skip, ",") {
		if strings.TrimSpace(s) == c {
			return true
		}
	}
	return false
}

// buildSmall writes o.smallTxs single-row UPDATE transactions with pgbench.
func (e *env) buildSmall(ctx context.Context) (int, int, error) {
	pgbench, err := pgTool("pgbench")
	if err != nil {
		return 0, 0, err
	}
	script := filepath.Join(e.tmp, "small.sql")
	body := fmt.Sprintf("\\set id random(1, %d)\nUPDATE items SET v = v + 1 WHERE id = :id;\n", e.o.largeRows)
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		return 0, 0, err
	}
	clients := min(e.o.clients, e.o.smallTxs)
	per, rest := e.o.smallTxs/clients, e.o.smallTxs%clients
	runs := [][2]int{{clients, per}}
	if rest > 0 {
		runs = append(runs, [2]int{rest, 1})
	}
	for _, r := range runs {
		cmd := exec.CommandContext(ctx, pgbench, "-n", "-M", "prepared", "-f", script,
			"-c", strconv.Itoa(r[0]), "-j", strconv.Itoa(min(r[0], 2)), "-t", strconv.Itoa(r[1]),
			"-h", "127.0.0.1", "-p", strconv.Itoa(e.pg.Port), "-U", "postgres", "postgres")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, 0, fmt.Errorf("pgbench: %w: %s", err, bytes.TrimSpace(out))
		}
		e.logf("pgbench: %s", bytes.TrimSpace(out))
	}
	return e.o.smallTxs, e.o.smallTxs, nil
}

// buildLarge updates every row but the sentinel in one transaction.
func (e *env) buildLarge(ctx context.Context) (int, int, error) {
	tag, err := e.conn.Exec(ctx, `UPDATE items SET v = v + 1 WHERE id <> $1`, sentinelID)
	if err != nil {
		return 0, 0, err
	}
	return 1, int(tag.RowsAffected()), nil
}

// runDecode times pg_logical_slot_peek_binary_changes over the whole backlog.
func (e *env) runDecode(ctx context.Context, slot string) (Run, pglogrepl.LSN, error) {
	var pid int32
	if err := e.conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		return Run{}, 0, err
	}
	before, _ := readProc(int(pid))
	var n int64
	var end pglogrepl.LSN
	t := time.Now()
	err := e.conn.QueryRow(ctx, `SELECT count(*), max(lsn) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', $2)`, slot, publication).Scan(&n, &end)
	elapsed := time.Since(t)
	if err != nil {
		return Run{}, 0, fmt.Errorf("decode: %w", err)
	}
	after, _ := readProc(int(pid))
	return Run{Contender: cDecode, Seconds: elapsed.Seconds(), Ratio: 1, ServerCPU: after.cpu - before.cpu, Messages: n}, end, nil
}

// runRecvlogical times pg_recvlogical streaming the backlog to /dev/null.
func (e *env) runRecvlogical(ctx context.Context, slot string, end pglogrepl.LSN) (Run, error) {
	bin, err := pgTool("pg_recvlogical")
	if err != nil {
		return Run{}, err
	}
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres", e.pg.Port)
	redis0 := redisCPU(ctx, e.rdb)
	stopPerf, err := e.startPerf(slot)
	if err != nil {
		return Run{}, err
	}
	defer stopPerf()
	t := time.Now()
	c, err := startChild(bin, filepath.Join(e.tmp, slot+".log"), "-d", dsn, "--slot", slot, "--start", "--no-loop",
		"-o", "proto_version=1", "-o", "publication_names="+publication, "--endpos", end.String(), "-f", "/dev/null")
	if err != nil {
		return Run{}, err
	}
	var server procStat
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	wal := 0
	for !c.exited() {
		select {
		case <-c.done:
		case <-ctx.Done():
			c.stop()
			return Run{}, ctx.Err()
		case <-tick.C:
			if wal == 0 {
				_, wal, _ = e.slotState(ctx, slot)
			}
			if s, ok := readProc(wal); wal != 0 && ok {
				server = s
			}
		}
	}
	elapsed := time.Since(t)
	if c.err != nil {
		return Run{}, c.failure()
	}
	return Run{Contender: cRecvlogical, Seconds: elapsed.Seconds(), ClientCPU: c.cpu(), ServerCPU: server.cpu,
		RedisCPU: redisCPU(ctx, e.rdb) - redis0}, nil
}

func (e *env) baselineArgs(slot, redisURL string) []string {
	return []string{e.self, "baseline", "-postgres", e.pg.URL(), "-redis", redisURL, "-slot", slot, "-publication", publication}
}

func (e *env) daemonArgs(slot, redisURL string) ([]string, error) {
	rules, err := e.writeRules(slot, nil)
	if err != nil {
		return nil, err
	}
	return []string{e.daemon, "run", "--config", rules, "--postgres", e.pg.URL(), "--redis", redisURL}, nil
}

// daemonClusterArgs runs the daemon against the Redis Cluster: its rules
// file says mode = "cluster" with the masters as seeds, and --redis must not
// be given.
func (e *env) daemonClusterArgs(slot string) ([]string, error) {
	rules, err := e.writeRules(slot, e.clusterSeeds)
	if err != nil {
		return nil, err
	}
	return []string{e.daemon, "run", "--config", rules, "--postgres", e.pg.URL()}, nil
}

// runConsumer times a child that invalidates keys (baseline or daemon): from
// its start until the sentinel key is gone from rdb (a single Redis or the
// cluster) and the slot's confirmed_flush_lsn has reached end.
func (e *env) runConsumer(ctx context.Context, rdb redis.UniversalClient, name, slot string, end pglogrepl.LSN, args []string) (Run, error) {
	if err := populate(ctx, rdb, e.o.largeRows); err != nil {
		return Run{}, err
	}
	redis0 := redisCPU(ctx, rdb)
	stopPerf, err := e.startPerf(slot)
	if err != nil {
		return Run{}, err
	}
	defer stopPerf()
	t := time.Now()
	c, err := startChild(args[0], filepath.Join(e.tmp, slot+".log"), args[1:]...)
	if err != nil {
		return Run{}, err
	}
	defer c.stop()

	var client, server procStat
	wal := 0
	lastSample := time.Time{}
	keyGone := false
	for {
		if c.exited() {
			return Run{}, c.failure()
		}
		if err := ctx.Err(); err != nil {
			return Run{}, err
		}
		if !keyGone {
			n, err := rdb.Exists(ctx, sentinelKey).Result()
			if err != nil {
				return Run{}, fmt.Errorf("poll redis: %w", err)
			}
			keyGone = n == 0
		}
		if keyGone || time.Since(lastSample) > 50*time.Millisecond {
			lsn, pid, err := e.slotState(ctx, slot)
			if err != nil {
				return Run{}, err
			}
			if keyGone && lsn >= end {
				break
			}
			if pid != 0 {
				wal = pid
			}
			if s, ok := readProc(wal); wal != 0 && ok {
				server = s
			}
			if s, ok := readProc(c.pid()); ok {
				client = s
			}
			lastSample = time.Now()
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(t)
	if s, ok := readProc(c.pid()); ok {
		client = s
	}
	if s, ok := readProc(wal); wal != 0 && ok {
		server = s
	}
	return Run{Contender: name, Seconds: elapsed.Seconds(), ClientCPU: client.cpu, ServerCPU: server.cpu,
		RedisCPU: redisCPU(ctx, rdb) - redis0, PeakRSSKB: client.hwmKB}, nil
}

// populate empties Redis and sets every key the rules can derive from items,
// so that each contender deletes keys that exist. On a cluster it flushes
// every master, and the pipeline is split by slot.
func populate(ctx context.Context, rdb redis.UniversalClient, rows int) error {
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.FlushAll(ctx).Err() })
	} else {
		err = rdb.FlushAll(ctx).Err()
	}
	if err != nil {
		return fmt.Errorf("flush redis: %w", err)
	}
	const batch = 10_000
	var keys []string
	for c := -1; c < categories; c++ {
		keys = append(keys, "items:cat:"+strconv.Itoa(c))
	}
	flush := func() error {
		p := rdb.Pipeline()
		for _, k := range keys {
			p.Set(ctx, k, "1", 0)
		}
		_, err := p.Exec(ctx)
		keys = keys[:0]
		if err != nil {
			return fmt.Errorf("populate redis: %w", err)
		}
		return nil
	}
	for id := 0; id <= rows; id++ {
		keys = append(keys, "item:"+strconv.Itoa(id))
		if len(keys) == batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
