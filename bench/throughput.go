package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Throughput is one write rate of the throughput scenario: pgbench
// single-row UPDATEs at that rate while the daemon follows live, then the
// same load with pg_recvlogical following instead.
type Throughput struct {
	// TargetTPS is the rate pgbench was asked for (-R); 0: unthrottled.
	TargetTPS int     `json:"target_tps"`
	Seconds   float64 `json:"seconds"`
	// AchievedTPS is what pgbench reported while the daemon followed.
	AchievedTPS float64 `json:"achieved_tps"`
	// LagBytes are pg_current_wal_lsn() − confirmed_flush_lsn of the
	// daemon's slot, sampled every 100 ms: median, maximum, and the mean of
	// the last and first quarters of the run (a lag that grows has Last >
	// First).
	LagBytesP50   float64 `json:"lag_bytes_p50"`
	LagBytesMax   float64 `json:"lag_bytes_max"`
	LagBytesFirst float64 `json:"lag_bytes_first_quarter"`
	LagBytesLast  float64 `json:"lag_bytes_last_quarter"`
	// LagSeconds is how long ago the server's WAL was where the slot's
	// confirmed position is, from the same samples: median and maximum.
	LagSecondsP50 float64 `json:"lag_seconds_p50"`
	LagSecondsMax float64 `json:"lag_seconds_max"`
	// DrainSeconds is how long the slot took to reach the server's WAL
	// position of the moment pgbench ended.
	DrainSeconds float64 `json:"drain_seconds"`
	// DaemonCPU is the daemon's CPU time over the run, in cores (seconds
	// per second); WalsenderCPU the same for its walsender.
	DaemonCPU    float64 `json:"daemon_cpu_cores"`
	WalsenderCPU float64 `json:"walsender_cpu_cores"`
	// Stale is the stale window measured meanwhile.
	Stale Delay `json:"stale_window"`
	// The same load with pg_recvlogical (TCP, status every second) following
	// instead of the daemon: the rate pgbench achieved, and the lag of its
	// walsender's sent_lsn (pg_recvlogical acknowledges only every second,
	// so its confirmed position says little).
	RecvlogicalTPS         float64 `json:"recvlogical_achieved_tps"`
	RecvlogicalSentLagP50  float64 `json:"recvlogical_sent_lag_bytes_p50"`
	RecvlogicalSentLagMax  float64 `json:"recvlogical_sent_lag_bytes_max"`
	RecvlogicalWalsender   float64 `json:"recvlogical_walsender_cpu_cores"`
	DaemonSentLagP50       float64 `json:"daemon_sent_lag_bytes_p50"`
	DaemonSentLagMax       float64 `json:"daemon_sent_lag_bytes_max"`
	LoadAvg                float64 `json:"load_avg"`
	RecvlogicalLoadAvg     float64 `json:"recvlogical_load_avg"`
	RecvlogicalLagSecsP50  float64 `json:"recvlogical_sent_lag_seconds_p50"`
	RecvlogicalLagSecsMax  float64 `json:"recvlogical_sent_lag_seconds_max"`
	RecvlogicalDrainSecond float64 `json:"recvlogical_drain_seconds"`
	// WalsenderWaits counts the daemon's walsender's wait_event
	// (pg_stat_activity), sampled every 100 ms; "CPU" when it waited on nothing.
	WalsenderWaits map[string]int `json:"walsender_waits,omitempty"`
	// Alt is the same load followed by another build (-alt-daemon); nil without.
	Alt *AltThroughput `json:"alt_daemon,omitempty"`
}

// AltThroughput is what another build of the daemon did under the same load.
type AltThroughput struct {
	AchievedTPS   float64 `json:"achieved_tps"`
	LagBytesP50   float64 `json:"lag_bytes_p50"`
	LagBytesMax   float64 `json:"lag_bytes_max"`
	LagBytesFirst float64 `json:"lag_bytes_first_quarter"`
	LagBytesLast  float64 `json:"lag_bytes_last_quarter"`
	DrainSeconds  float64 `json:"drain_seconds"`
	// WalsenderWaits counts the walsender's wait events, sampled every 100 ms.
	WalsenderWaits map[string]int `json:"walsender_waits,omitempty"`
	DaemonCPU      float64        `json:"daemon_cpu_cores"`
	WalsenderCPU   float64        `json:"walsender_cpu_cores"`
	StaleP50       float64        `json:"stale_p50_ms"`
	StaleP99       float64        `json:"stale_p99_ms"`
}

// throughputRates are the pgbench rates of the scenario; 0 is unthrottled.
var throughputRates = []int{1000, 5000, 10000, 20000, 0}

// throughput runs the throughput scenario: for each rate, the daemon
// follows pgbench live on its own slot, then pg_recvlogical on another.
func (e *env) throughput(ctx context.Context) ([]Throughput, error) {
	pgbench, err := pgTool("pgbench")
	if err != nil {
		return nil, err
	}
	script := filepath.Join(e.tmp, "throughput.sql")
	// pgbench updates the lower half of items; the stale window samples
	// use the upper half, so that pgbench never deletes a sample's key.
	half := max(e.o.largeRows/2, 1)
	body := fmt.Sprintf("\\set id random(1, %d)\nUPDATE items SET v = v + 1 WHERE id = :id;\n", half)
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		return nil, err
	}
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		return nil, err
	}

	var out []Throughput
	for _, rate := range throughputRates {
		tp := Throughput{TargetTPS: rate, Seconds: e.o.tpSeconds.Seconds()}
		name := "unthrottled"
		if rate > 0 {
			name = fmt.Sprintf("%d tx/s", rate)
		}

		// The daemon, live on a new slot.
		slot := fmt.Sprintf("bench_tp_daemon_%d", rate)
		if _, err := e.createSlot(ctx, slot); err != nil {
			return nil, err
		}
		args, err := e.daemonArgs(e.daemon, e.pg.URL(), slot, e.redis.URL())
		if err != nil {
			return nil, err
		}
		tp.LoadAvg = loadAvg()
		e.step("throughput %s: the daemon follows pgbench for %s (load %.2f)", name, e.o.tpSeconds, tp.LoadAvg)
		d, err := e.follow(ctx, slot, args, pgbench, script, rate, half)
		e.dropSlot(context.Background(), slot)
		if err != nil {
			return nil, fmt.Errorf("throughput %s, daemon: %w", name, err)
		}
		tp.AchievedTPS, tp.DaemonCPU, tp.WalsenderCPU, tp.DrainSeconds = d.tps, d.clientCPU, d.walsenderCPU, d.drain
		tp.LagBytesP50, tp.LagBytesMax = percentile(d.lagBytesSorted(), 50), slices.Max(append(d.lagBytes(), 0))
		tp.LagBytesFirst, tp.LagBytesLast = d.quarters()
		secs := d.lagSecondsSorted()
		tp.LagSecondsP50, tp.LagSecondsMax = percentile(secs, 50), percentile(secs, 100)
		sent := d.sentLagSorted()
		tp.DaemonSentLagP50, tp.DaemonSentLagMax = percentile(sent, 50), percentile(sent, 100)
		tp.Stale = summarise(cDaemon, d.stale)
		tp.WalsenderWaits = d.waits
		e.step("throughput %s: %.0f tx/s, lag p50 %.1f MB max %.1f MB (first quarter %.1f, last %.1f), p50 %.3f s max %.3f s, drain %.2f s, daemon %.2f cores, walsender %.2f cores, stale p99 %.1f ms",
			name, tp.AchievedTPS, tp.LagBytesP50/1e6, tp.LagBytesMax/1e6, tp.LagBytesFirst/1e6, tp.LagBytesLast/1e6,
			tp.LagSecondsP50, tp.LagSecondsMax, tp.DrainSeconds, tp.DaemonCPU, tp.WalsenderCPU, tp.Stale.P99)
		e.step("throughput %s: the walsender's wait events, every 100 ms: %v", name, d.waits)

		// Another build of the daemon (-alt-daemon), under the same load.
		if e.o.altDaemon != "" {
			aslot := fmt.Sprintf("bench_tp_alt_%d", rate)
			if _, err := e.createSlot(ctx, aslot); err != nil {
				return nil, err
			}
			aargs, err := e.daemonArgs(e.o.altDaemon, e.pg.URL(), aslot, e.redis.URL())
			if err != nil {
				return nil, err
			}
			e.step("throughput %s: the other build (-alt-daemon) follows pgbench for %s (load %.2f)", name, e.o.tpSeconds, loadAvg())
			a, err := e.follow(ctx, aslot, aargs, pgbench, script, rate, half)
			e.dropSlot(context.Background(), aslot)
			if err != nil {
				return nil, fmt.Errorf("throughput %s, alt daemon: %w", name, err)
			}
			ast := summarise(cAlt, a.stale)
			fl, ll := a.quarters()
			tp.Alt = &AltThroughput{WalsenderWaits: a.waits, AchievedTPS: a.tps, LagBytesP50: percentile(a.lagBytesSorted(), 50), LagBytesMax: percentile(a.lagBytesSorted(), 100),
				LagBytesFirst: fl, LagBytesLast: ll, DaemonCPU: a.clientCPU, WalsenderCPU: a.walsenderCPU, StaleP50: ast.P50, StaleP99: ast.P99, DrainSeconds: a.drain}
			e.step("throughput %s: other build: %.0f tx/s, lag p50 %.1f MB max %.1f MB (first quarter %.1f, last %.1f), drain %.2f s, daemon %.2f cores, walsender %.2f cores, stale p50 %.1f p99 %.1f ms",
				name, a.tps, tp.Alt.LagBytesP50/1e6, tp.Alt.LagBytesMax/1e6, fl/1e6, ll/1e6, a.drain, a.clientCPU, a.walsenderCPU, ast.P50, ast.P99)
			e.step("throughput %s: other build: the walsender's wait events: %v", name, a.waits)
		}

		// pg_recvlogical, the reference, on another new slot.
		if !e.skipped(cRecvlogical) {
			rslot := fmt.Sprintf("bench_tp_recvlogical_%d", rate)
			if _, err := e.createSlot(ctx, rslot); err != nil {
				return nil, err
			}
			bin, err := pgTool("pg_recvlogical")
			if err != nil {
				return nil, err
			}
			dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres", e.pg.Port)
			rargs := []string{bin, "-d", dsn, "--slot", rslot, "--start", "-s", "1", "-F", "1",
				"-o", "proto_version=1", "-o", "publication_names=" + publication, "-f", "/dev/null"}
			tp.RecvlogicalLoadAvg = loadAvg()
			e.step("throughput %s: pg_recvlogical follows pgbench for %s (load %.2f)", name, e.o.tpSeconds, tp.RecvlogicalLoadAvg)
			r, err := e.follow(ctx, rslot, rargs, pgbench, script, rate, 0)
			e.dropSlot(context.Background(), rslot)
			if err != nil {
				return nil, fmt.Errorf("throughput %s, pg_recvlogical: %w", name, err)
			}
			rs := r.sentLagSorted()
			tp.RecvlogicalTPS, tp.RecvlogicalWalsender = r.tps, r.walsenderCPU
			tp.RecvlogicalSentLagP50, tp.RecvlogicalSentLagMax = percentile(rs, 50), percentile(rs, 100)
			rsecs := r.sentLagSecondsSorted()
			tp.RecvlogicalLagSecsP50, tp.RecvlogicalLagSecsMax = percentile(rsecs, 50), percentile(rsecs, 100)
			tp.RecvlogicalDrainSecond = r.sentDrain
			e.step("throughput %s: pg_recvlogical: %.0f tx/s, sent lag p50 %.1f MB max %.1f MB, walsender %.2f cores",
				name, r.tps, tp.RecvlogicalSentLagP50/1e6, tp.RecvlogicalSentLagMax/1e6, tp.RecvlogicalWalsender)
		}
		out = append(out, tp)
	}
	return out, nil
}

// followed is what follow measured.
type followed struct {
	tps          float64
	clientCPU    float64 // cores
	walsenderCPU float64 // cores
	samples      []lagPoint
	stale        []float64 // ms; negative: a timeout
	drain        float64   // seconds from pgbench's end until confirmed reached the WAL position of then
	// waits counts the walsender's wait_event in pg_stat_activity, one
	// sample per tick ("CPU" when it waited on nothing).
	waits     map[string]int
	sentDrain float64 // the same for the walsender's sent position
}

// lagPoint is one sample of the server's WAL position and the slot's.
type lagPoint struct {
	at        time.Time
	wal       int64 // pg_current_wal_lsn()
	confirmed int64 // confirmed_flush_lsn
	sent      int64 // pg_stat_replication.sent_lsn of the slot's walsender; 0: unknown
}

func (f *followed) lagBytes() []float64 {
	var v []float64
	for _, p := range f.samples {
		v = append(v, float64(max(p.wal-p.confirmed, 0)))
	}
	return v
}

func (f *followed) lagBytesSorted() []float64 { v := f.lagBytes(); slices.Sort(v); return v }

func (f *followed) sentLagSorted() []float64 {
	var v []float64
	for _, p := range f.samples {
		if p.sent != 0 {
			v = append(v, float64(max(p.wal-p.sent, 0)))
		}
	}
	slices.Sort(v)
	return v
}

// quarters returns the mean lag in bytes over the first and the last
// quarter of the samples.
func (f *followed) quarters() (first, last float64) {
	v := f.lagBytes()
	q := len(v) / 4
	if q == 0 {
		return 0, 0
	}
	mean := func(xs []float64) float64 {
		s := 0.0
		for _, x := range xs {
			s += x
		}
		return s / float64(len(xs))
	}
	return mean(v[:q]), mean(v[len(v)-q:])
}

// lagSecondsSorted turns each sample's confirmed position into a time lag:
// how long before the sample the server's WAL was at that position,
// interpolated between earlier samples.
func (f *followed) lagSecondsSorted() []float64 {
	return f.timeLag(func(p lagPoint) int64 { return p.confirmed })
}

func (f *followed) sentLagSecondsSorted() []float64 {
	return f.timeLag(func(p lagPoint) int64 { return p.sent })
}

func (f *followed) timeLag(pos func(lagPoint) int64) []float64 {
	var v []float64
	for i, p := range f.samples {
		at := pos(p)
		if at == 0 {
			continue
		}
		lag := 0.0
		if at < p.wal {
			// The latest earlier sample whose WAL position was at or below
			// at, then linear interpolation to the next one: when the
			// server's WAL passed at.
			j := i
			for j > 0 && f.samples[j].wal > at {
				j--
			}
			passed := f.samples[j].at
			if a, b := f.samples[j], f.samples[min(j+1, i)]; b.wal > a.wal && at > a.wal {
				passed = a.at.Add(time.Duration(float64(b.at.Sub(a.at)) * float64(at-a.wal) / float64(b.wal-a.wal)))
			}
			lag = p.at.Sub(passed).Seconds()
		}
		v = append(v, lag)
	}
	slices.Sort(v)
	return v
}

// follow starts the consumer (args), lets it reach the server's position,
// runs pgbench at rate for o.tpSeconds while sampling the lag every 100 ms
// and, when staleFrom > 0, taking stale window samples on ids above
// staleFrom, then waits for the consumer to drain and stops it.
func (e *env) follow(ctx context.Context, slot string, args []string, pgbench, script string, rate, staleFrom int) (*followed, error) {
	c, err := startChild(args[0], filepath.Join(e.tmp, slot+".log"), args[1:]...)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	conn, err := pgx.Connect(ctx, e.pg.URL())
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	sample := func() (lagPoint, int, error) {
		var p lagPoint
		var pid *int32
		var sent *int64
		err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn() - '0/0', s.confirmed_flush_lsn - '0/0', s.active_pid, r.sent_lsn - '0/0'
			FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1`, slot).
			Scan(&p.wal, &p.confirmed, &pid, &sent)
		p.at = time.Now()
		if sent != nil {
			p.sent = *sent
		}
		if pid == nil {
			return p, 0, err
		}
		return p, int(*pid), err
	}
	// Streaming and level with the server.
	deadline := time.Now().Add(60 * time.Second)
	var wal int
	for {
		if c.exited() {
			return nil, c.failure()
		}
		p, pid, err := sample()
		if err != nil {
			return nil, err
		}
		if pid != 0 && p.sent != 0 && p.confirmed >= p.wal-1<<20 {
			wal = pid
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("not streaming after 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	f := &followed{}
	client0, _ := readProc(c.pid())
	wal0, _ := readProc(wal)
	t0 := time.Now()
	pgArgs := []string{"-n", "-M", "prepared", "-f", script, "-c", strconv.Itoa(e.o.clients), "-j", "2",
		"-T", strconv.Itoa(int(e.o.tpSeconds.Seconds())), "-h", "127.0.0.1", "-p", strconv.Itoa(e.pg.Port), "-U", "postgres", "postgres"}
	if rate > 0 {
		pgArgs = append(pgArgs, "-R", strconv.Itoa(rate))
	}
	pgb := exec.CommandContext(ctx, pgbench, pgArgs...)
	var pgbOut strings.Builder
	pgb.Stdout, pgb.Stderr = &pgbOut, &pgbOut
	if err := pgb.Start(); err != nil {
		return nil, fmt.Errorf("pgbench: %w", err)
	}
	pgbDone := make(chan error, 1)
	go func() { pgbDone <- pgb.Wait() }()

	var (
		staleMu   sync.Mutex
		staleStop = make(chan struct{})
		staleWG   sync.WaitGroup
		staleErr  error
	)
	if staleFrom > 0 {
		staleWG.Add(1)
		go func() {
			defer staleWG.Done()
			err := e.staleSamples(ctx, staleFrom, staleStop, func(ms float64) {
				staleMu.Lock()
				f.stale = append(f.stale, ms)
				staleMu.Unlock()
			})
			staleMu.Lock()
			staleErr = err
			staleMu.Unlock()
		}()
	}

	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var pgbErr error
loop:
	for {
		select {
		case pgbErr = <-pgbDone:
			break loop
		case <-ctx.Done():
			pgb.Process.Kill()
			<-pgbDone
			close(staleStop)
			staleWG.Wait()
			return nil, ctx.Err()
		case <-tick.C:
			p, _, err := sample()
			if err == nil {
				f.samples = append(f.samples, p)
			}
			var ev *string
			if err := conn.QueryRow(ctx, `SELECT wait_event FROM pg_stat_activity WHERE pid = $1`, wal).Scan(&ev); err == nil {
				w := "CPU"
				if ev != nil {
					w = *ev
				}
				if f.waits == nil {
					f.waits = map[string]int{}
				}
				f.waits[w]++
			}
		}
	}
	elapsed := time.Since(t0)
	close(staleStop)
	staleWG.Wait()
	if pgbErr != nil {
		return nil, fmt.Errorf("pgbench: %w: %s", pgbErr, strings.TrimSpace(pgbOut.String()))
	}
	if staleErr != nil {
		return nil, staleErr
	}
	if m := regexp.MustCompile(`tps = ([0-9.]+)`).FindStringSubmatch(pgbOut.String()); m != nil {
		f.tps, _ = strconv.ParseFloat(m[1], 64)
	}
	client1, _ := readProc(c.pid())
	wal1, _ := readProc(wal)
	f.clientCPU = (client1.cpu - client0.cpu) / elapsed.Seconds()
	f.walsenderCPU = (wal1.cpu - wal0.cpu) / elapsed.Seconds()

	// Drain: until the slot reaches the WAL position of pgbench's end.
	endAt := time.Now()
	end, _, err := sample()
	if err != nil {
		return nil, err
	}
	for f.drain == 0 || (f.sentDrain == 0 && end.sent != 0) {
		p, _, err := sample()
		if err != nil {
			return nil, err
		}
		if f.drain == 0 && p.confirmed >= end.wal {
			f.drain = max(time.Since(endAt).Seconds(), 1e-6)
		}
		if f.sentDrain == 0 && p.sent >= end.wal {
			f.sentDrain = max(time.Since(endAt).Seconds(), 1e-6)
		}
		if time.Since(endAt) > 120*time.Second {
			return nil, fmt.Errorf("not drained 120s after pgbench ended")
		}
		if c.exited() {
			return nil, c.failure()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return f, nil
}

// staleSamples takes stale window samples until stop is closed: SET
// item:<id> for an id above from, commit a single-row UPDATE of it, and
// poll Redis until the key is gone; a 20 ms pause between samples.
func (e *env) staleSamples(ctx context.Context, from int, stop <-chan struct{}, record func(ms float64)) error {
	conn, err := pgx.Connect(ctx, e.pg.URL())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	span := max(e.o.largeRows-from, 1)
	for n := 0; ; n++ {
		select {
		case <-stop:
			return nil
		case <-time.After(time.Duration(15000+rand.IntN(10000)) * time.Microsecond):
		}
		id := from + 1 + n%span
		key := "item:" + strconv.Itoa(id)
		if err := e.rdb.Set(ctx, key, "1", 0).Err(); err != nil {
			return fmt.Errorf("stale sample: set %s: %w", key, err)
		}
		if _, err := conn.Exec(ctx, `UPDATE items SET v = v + 1 WHERE id = $1`, id); err != nil {
			return fmt.Errorf("stale sample: update: %w", err)
		}
		t0 := time.Now()
		for {
			exists, err := e.rdb.Exists(ctx, key).Result()
			if err != nil && err != redis.Nil {
				return fmt.Errorf("stale sample: poll %s: %w", key, err)
			}
			if exists == 0 {
				record(float64(time.Since(t0).Microseconds()) / 1000)
				break
			}
			if el := time.Since(t0); el > staleTimeout {
				record(-float64(el.Microseconds()) / 1000)
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
}
