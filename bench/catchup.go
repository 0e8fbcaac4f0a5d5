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
	// Segments is how many TCP data segments the walsender sent
	// (data_segs_out of its socket, from ss -ti); zero over a Unix socket
	// and for decode.
	Segments int64 `json:"walsender_data_segments,omitempty"`
	// LoadAvg is the 1-minute load average when the run started: the
	// machine is shared, and a loaded run is slower.
	LoadAvg float64 `json:"load_avg"`
	// AllSeconds holds every run's time when the contender ran more than
	// once (-runs); the row is the run with the median time. AllServerCPU,
	// AllSegments and AllLoadAvg are the same runs' walsender CPU, segment
	// counts and load averages, in the same order.
	AllSeconds   []float64 `json:"all_seconds,omitempty"`
	AllServerCPU []float64 `json:"all_server_cpu_seconds,omitempty"`
	AllSegments  []int64   `json:"all_walsender_data_segments,omitempty"`
	AllLoadAvg   []float64 `json:"all_load_avg,omitempty"`
}

// Contenders, in the order they run. "(unix)" reads the WAL over
// PostgreSQL's Unix socket instead of TCP on 127.0.0.1.
const (
	cDecode          = "decode"
	cRecvlogical     = "pg_recvlogical"
	cRecvlogicalUnix = "pg_recvlogical (unix)"
	cBaseline        = "baseline"
	cDaemon          = "daemon"
	cDaemonUnix      = "daemon (unix)"
	// cDaemonRedisUnix talks to Redis over its Unix socket too.
	cDaemonRedisUnix = "daemon (unix, redis unix)"
	// cDaemonCluster is the daemon against a Redis Cluster (-cluster).
	cDaemonCluster     = "daemon (cluster)"
	cDaemonClusterUnix = "daemon (cluster, unix)"
	// cAlt and cAltUnix are another build of the daemon (-alt-daemon),
	// interleaved with this one.
	cAlt     = "daemon (alt)"
	cAltUnix = "daemon (alt, unix)"
)

// unixContender reports whether c reads the WAL over the Unix socket.
func unixContender(c string) bool {
	return strings.Contains(c, "unix)") || strings.Contains(c, "unix,")
}

// contenders lists the catch-up contenders this run measures, decode first.
func (e *env) contenders() []string {
	tcp, unix := e.transport("tcp"), e.transport("unix")
	var cs []string
	add := func(on bool, c ...string) {
		if on {
			cs = append(cs, c...)
		}
	}
	add(true, cDecode)
	add(!e.skipped(cRecvlogical) && tcp, cRecvlogical)
	add(!e.skipped(cRecvlogical) && unix, cRecvlogicalUnix)
	add(!e.skipped(cBaseline), cBaseline)
	add(!e.skipped(cDaemon) && tcp, cDaemon)
	add(!e.skipped(cDaemon) && unix, cDaemonUnix, cDaemonRedisUnix)
	add(e.o.altDaemon != "" && tcp, cAlt)
	add(e.o.altDaemon != "" && unix, cAltUnix)
	add(e.o.cluster && tcp, cDaemonCluster)
	add(e.o.cluster && unix, cDaemonClusterUnix)
	return cs
}

// transport reports whether -transports names t.
func (e *env) transport(t string) bool {
	for s := range strings.SplitSeq(e.o.transports, ",") {
		if strings.TrimSpace(s) == t {
			return true
		}
	}
	return false
}

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

	contenders := e.contenders()
	if slices.Contains(contenders, cDaemonCluster) || slices.Contains(contenders, cDaemonClusterUnix) {
		if err := e.startCluster(ctx); err != nil {
			return nil, err
		}
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
			n := fmt.Sprintf("%s_%s_%d", src, strings.NewReplacer(" ", "_", "(", "", ")", "", ",", "").Replace(c), i+1)
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

	// The streaming contenders, each alone, each run on its own copy. The
	// runs are interleaved, one of each contender per round, so that a
	// spell of load from elsewhere on the machine hits every contender
	// alike rather than all the runs of one.
	byContender := map[string][]Run{}
	for round := range e.o.runs {
		for _, c := range contenders[1:] {
			if round >= len(copies[c]) {
				continue
			}
			slot := copies[c][round]
			e.step("%s: %s, run %d of %d (load %.2f)", name, c, round+1, len(copies[c]), loadAvg())
			r, err := e.runContender(ctx, c, slot, end)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c, err)
			}
			e.step("%s: %s took %.2fs (%.2f× decode), walsender CPU %.2fs, %d segments", name, c, r.Seconds, r.Seconds/decode.Seconds,
				r.ServerCPU, r.Segments)
			byContender[c] = append(byContender[c], r)
		}
	}
	for _, c := range contenders[1:] {
		r := median(byContender[c])
		r.Ratio = r.Seconds / decode.Seconds
		sc.Runs = append(sc.Runs, r)
	}
	return sc, nil
}

// runContender runs streaming contender c once on slot.
func (e *env) runContender(ctx context.Context, c, slot string, end pglogrepl.LSN) (Run, error) {
	pgURL := e.pg.URL()
	if unixContender(c) {
		pgURL = e.pg.UnixURL()
	}
	switch c {
	case cRecvlogical, cRecvlogicalUnix:
		return e.runRecvlogical(ctx, c, slot, end)
	case cBaseline:
		return e.runConsumer(ctx, e.rdb, c, slot, end, e.baselineArgs(e.pg.URL(), slot, e.redis.URL()))
	case cDaemon, cDaemonUnix, cDaemonRedisUnix, cAlt, cAltUnix:
		bin, redisURL := e.daemon, e.redis.URL()
		if c == cAlt || c == cAltUnix {
			bin = e.o.altDaemon
		}
		if c == cDaemonRedisUnix {
			redisURL = e.redis.UnixURL()
		}
		args, err := e.daemonArgs(bin, pgURL, slot, redisURL)
		if err != nil {
			return Run{}, err
		}
		return e.runConsumer(ctx, e.rdb, c, slot, end, args)
	case cDaemonCluster, cDaemonClusterUnix:
		args, err := e.daemonClusterArgs(pgURL, slot)
		if err != nil {
			return Run{}, err
		}
		return e.runConsumer(ctx, e.crdb, c, slot, end, args)
	}
	return Run{}, fmt.Errorf("unknown contender %q", c)
}

// median returns the run with the median time, with every run's time in
// AllSeconds when there was more than one. Its peak RSS is the highest of
// all runs, so that the memory target is checked against the worst.
func median(runs []Run) Run {
	sorted := slices.SortedFunc(slices.Values(runs), func(a, b Run) int { return cmp.Compare(a.Seconds, b.Seconds) })
	m := sorted[(len(sorted)-1)/2]
	if len(runs) > 1 {
		m.AllSeconds, m.AllServerCPU, m.AllSegments, m.AllLoadAvg = nil, nil, nil, nil
		for _, r := range runs {
			m.AllSeconds = append(m.AllSeconds, r.Seconds)
			m.AllServerCPU = append(m.AllServerCPU, r.ServerCPU)
			m.AllSegments = append(m.AllSegments, r.Segments)
			m.AllLoadAvg = append(m.AllLoadAvg, r.LoadAvg)
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
func (e *env) runRecvlogical(ctx context.Context, name, slot string, end pglogrepl.LSN) (Run, error) {
	bin, err := pgTool("pg_recvlogical")
	if err != nil {
		return Run{}, err
	}
	host := "127.0.0.1"
	if unixContender(name) {
		host = e.pg.Dir
	}
	dsn := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", host, e.pg.Port)
	load := loadAvg()
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
	var segs int64
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
			if n, ok := e.walsenderSegments(wal); ok {
				segs = n
			}
		}
	}
	elapsed := time.Since(t)
	if c.err != nil {
		return Run{}, c.failure()
	}
	// The walsender exits with pg_recvlogical: its CPU time and segment
	// count are those of the last sample, up to 50 ms short.
	return Run{Contender: name, Seconds: elapsed.Seconds(), ClientCPU: c.cpu(), ServerCPU: server.cpu,
		RedisCPU: redisCPU(ctx, e.rdb) - redis0, Segments: segs, LoadAvg: load}, nil
}

func (e *env) baselineArgs(pgURL, slot, redisURL string) []string {
	return []string{e.self, "baseline", "-postgres", pgURL, "-redis", redisURL, "-slot", slot, "-publication", publication}
}

func (e *env) daemonArgs(bin, pgURL, slot, redisURL string) ([]string, error) {
	rules, err := e.writeRules(slot, nil)
	if err != nil {
		return nil, err
	}
	return []string{bin, "run", "--config", rules, "--postgres", pgURL, "--redis", redisURL}, nil
}

// daemonClusterArgs runs the daemon against the Redis Cluster: its rules
// file says mode = "cluster" with the masters as seeds, and --redis must not
// be given.
func (e *env) daemonClusterArgs(pgURL, slot string) ([]string, error) {
	rules, err := e.writeRules(slot, e.clusterSeeds)
	if err != nil {
		return nil, err
	}
	return []string{e.daemon, "run", "--config", rules, "--postgres", pgURL}, nil
}

// runConsumer times a child that invalidates keys (baseline or daemon): from
// its start until the sentinel key is gone from rdb (a single Redis or the
// cluster) and the slot's confirmed_flush_lsn has reached end.
func (e *env) runConsumer(ctx context.Context, rdb redis.UniversalClient, name, slot string, end pglogrepl.LSN, args []string) (Run, error) {
	if err := populate(ctx, rdb, e.o.largeRows); err != nil {
		return Run{}, err
	}
	redis0 := redisCPU(ctx, rdb)
	load := loadAvg()
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
	segs, _ := e.walsenderSegments(wal)
	return Run{Contender: name, Seconds: elapsed.Seconds(), ClientCPU: client.cpu, ServerCPU: server.cpu,
		RedisCPU: redisCPU(ctx, rdb) - redis0, PeakRSSKB: client.hwmKB, Segments: segs, LoadAvg: load}, nil
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
