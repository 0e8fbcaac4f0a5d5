package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// Stale is one condition of the stale window scenario: how long a key
// stays in Redis after the UPDATE that invalidates it has committed.
type Stale struct {
	Condition string  `json:"condition"` // "idle" or "load", and " (unix)" over the Unix socket
	LoadTPS   float64 `json:"load_tps"`  // background transactions per second achieved; 0 when idle
	Samples   int     `json:"samples"`
	Stats     []Delay `json:"contenders"`
}

// Delay summarises one contender's stale windows, in milliseconds.
type Delay struct {
	Contender string    `json:"contender"`
	P50       float64   `json:"p50_ms"`
	P90       float64   `json:"p90_ms"`
	P99       float64   `json:"p99_ms"`
	Max       float64   `json:"max_ms"`
	Mean      float64   `json:"mean_ms"`
	Timeouts  int       `json:"timeouts"`
	PeakRSSKB int64     `json:"peak_rss_kb,omitempty"` // over both conditions
	Samples   []float64 `json:"samples_ms"`            // in the order taken
}

const (
	staleWarmup  = 20               // samples thrown away while both consumers connect
	staleTimeout = 10 * time.Second // a sample whose key is still there after this counts as a timeout
)

// staleWindow runs the stale window scenario over each transport of
// -transports: TCP first, then the Unix socket, whose conditions are
// named "idle (unix)" and "load (unix)".
func (e *env) staleWindow(ctx context.Context) ([]Stale, error) {
	var out []Stale
	for _, t := range []string{"tcp", "unix"} {
		if !e.transport(t) {
			continue
		}
		st, err := e.staleWindowOver(ctx, t)
		if err != nil {
			return nil, err
		}
		out = append(out, st...)
	}
	return out, nil
}

// staleWindowOver runs the daemon and the baseline side by side, each on its
// own slot and its own Redis, both reading the WAL over transport (tcp or
// unix), idle and then under background load.
func (e *env) staleWindowOver(ctx context.Context, transport string) ([]Stale, error) {
	pgURL, suffix := e.pg.URL(), ""
	if transport == "unix" {
		pgURL, suffix = e.pg.UnixURL(), " (unix)"
	}
	e.step("stale window%s: starting a second Redis, the daemon and the baseline", suffix)
	redis2, err := localsvc.StartRedis(ctx)
	if err != nil {
		return nil, err
	}
	defer redis2.Close()
	rdb2 := newRedisClient(redis2.Addr())
	defer rdb2.Close()
	if err := e.rdb.FlushAll(ctx).Err(); err != nil {
		return nil, err
	}

	names := [2]string{cDaemon, cBaseline}
	slots := [2]string{"bench_stale_daemon_" + transport, "bench_stale_baseline_" + transport}
	rdbs := [2]*redis.Client{e.rdb, rdb2}
	var children [2]*child
	for i, slot := range slots {
		if _, err := e.createSlot(ctx, slot); err != nil {
			return nil, err
		}
		defer e.dropSlot(context.Background(), slot)
		var args []string
		if names[i] == cDaemon {
			if args, err = e.daemonArgs(e.daemon, pgURL, slot, e.redis.URL()); err != nil {
				return nil, err
			}
		} else {
			args = e.baselineArgs(pgURL, slot, redis2.URL())
		}
		c, err := startChild(args[0], filepath.Join(e.tmp, slot+".log"), args[1:]...)
		if err != nil {
			return nil, err
		}
		defer c.stop()
		children[i] = c
	}

	conn, err := pgx.Connect(ctx, e.pg.URL())
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())

	s := &sampler{conn: conn, rdbs: rdbs, children: children}
	if _, err := s.take(ctx, staleWarmup, 30*time.Second); err != nil {
		return nil, fmt.Errorf("warm up: %w", err)
	}

	var out []Stale
	for _, cond := range []string{"idle", "load"} {
		e.step("stale window%s: %d samples, %s", suffix, e.o.samples, cond)
		var load *loadGen
		if cond == "load" {
			load = startLoad(ctx, e.pg.URL(), e.o.loadTPS)
			time.Sleep(time.Second) // let the load settle
		}
		delays, err := s.take(ctx, e.o.samples, staleTimeout)
		var tps float64
		if load != nil {
			tps, err = load.stop(err)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cond, err)
		}
		st := Stale{Condition: cond + suffix, LoadTPS: tps, Samples: e.o.samples}
		for i, name := range names {
			st.Stats = append(st.Stats, summarise(name, delays[i]))
		}
		out = append(out, st)
		e.step("stale window %s: daemon p50 %.2f p99 %.2f ms; baseline p50 %.2f p99 %.2f ms%s",
			cond, st.Stats[0].P50, st.Stats[0].P99, st.Stats[1].P50, st.Stats[1].P99, loadNote(tps))
	}
	for i, c := range children {
		if p, ok := readProc(c.pid()); ok {
			for j := range out {
				out[j].Stats[i].PeakRSSKB = p.hwmKB
			}
		}
	}
	return out, nil
}

func loadNote(tps float64) string {
	if tps == 0 {
		return ""
	}
	return fmt.Sprintf(" (background load %.0f tx/s)", tps)
}

// sampler takes stale window samples against both consumers.
type sampler struct {
	conn     *pgx.Conn
	rdbs     [2]*redis.Client
	children [2]*child
	n        int // samples taken so far, for row ids and poll order
}

// take measures n samples. For each: SET the key in both Redis, commit a
// single-row UPDATE, take t0 when the commit returns, then poll both Redis,
// first one then the other, alternating which goes first, until the key is
// gone from both. A sample still there after timeout is recorded as the
// timeout and counted.
func (s *sampler) take(ctx context.Context, n int, timeout time.Duration) ([2][]float64, error) {
	var delays [2][]float64
	for range n {
		for i, c := range s.children {
			if c.exited() {
				return delays, fmt.Errorf("%s: %w", []string{cDaemon, cBaseline}[i], c.failure())
			}
		}
		id := s.n%1000 + 1
		key := "item:" + strconv.Itoa(id)
		for _, r := range s.rdbs {
			if err := r.Set(ctx, key, "1", 0).Err(); err != nil {
				return delays, fmt.Errorf("set %s: %w", key, err)
			}
		}
		if _, err := s.conn.Exec(ctx, `UPDATE items SET v = v + 1 WHERE id = $1`, id); err != nil {
			return delays, fmt.Errorf("update: %w", err)
		}
		t0 := time.Now()
		first := s.n % 2
		s.n++
		var d [2]time.Duration
		pending := [2]bool{true, true}
		for pending[0] || pending[1] {
			for k := range 2 {
				j := (first + k) % 2
				if !pending[j] {
					continue
				}
				exists, err := s.rdbs[j].Exists(ctx, key).Result()
				if err != nil {
					return delays, fmt.Errorf("poll %s: %w", key, err)
				}
				if exists == 0 {
					d[j], pending[j] = time.Since(t0), false
				} else if el := time.Since(t0); el > timeout {
					d[j], pending[j] = -el, false // negative: a timeout
				}
			}
		}
		for j := range 2 {
			delays[j] = append(delays[j], float64(d[j].Microseconds())/1000)
		}
		// A short random pause, so that samples do not fall into step with
		// anything periodic (status updates, the load's pacing).
		time.Sleep(time.Duration(2000+rand.IntN(3000)) * time.Microsecond)
	}
	return delays, nil
}

func summarise(name string, ms []float64) Delay {
	d := Delay{Contender: name, Samples: ms}
	var ok []float64
	for _, v := range ms {
		if v < 0 {
			d.Timeouts++
			v = -v
		}
		ok = append(ok, v)
	}
	slices.Sort(ok)
	var sum float64
	for _, v := range ok {
		sum += v
	}
	d.P50, d.P90, d.P99 = percentile(ok, 50), percentile(ok, 90), percentile(ok, 99)
	d.Max = ok[len(ok)-1]
	d.Mean = sum / float64(len(ok))
	return d
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}

// loadGen runs rate-limited single-row UPDATE transactions on other from two
// connections.
type loadGen struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex // protects count and err
	count  int
	err    error
	start  time.Time
}

func startLoad(ctx context.Context, url string, tps int) *loadGen {
	ctx, cancel := context.WithCancel(ctx)
	l := &loadGen{cancel: cancel, start: time.Now()}
	const workers = 2
	interval := time.Second * workers / time.Duration(tps)
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			err := l.work(ctx, url, interval, w)
			l.mu.Lock()
			if l.err == nil && err != nil && ctx.Err() == nil {
				l.err = err
			}
			l.mu.Unlock()
		}()
	}
	return l
}

func (l *loadGen) work(ctx context.Context, url string, interval time.Duration, w int) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("load: connect: %w", err)
	}
	defer conn.Close(context.Background())
	next := time.Now().Add(interval * time.Duration(w) / 2)
	for ctx.Err() == nil {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		} else if d < -time.Second {
			next = time.Now() // fell far behind: do not burst to catch up
		}
		next = next.Add(interval)
		if _, err := conn.Exec(ctx, `UPDATE other SET v = v + 1 WHERE id = $1`, 1+rand.IntN(otherRows)); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("load: update: %w", err)
		}
		l.mu.Lock()
		l.count++
		l.mu.Unlock()
	}
	return nil
}

// stop ends the load and returns the rate achieved, and err or the load's
// own error.
func (l *loadGen) stop(err error) (float64, error) {
	elapsed := time.Since(l.start)
	l.cancel()
	l.wg.Wait()
	if err == nil {
		err = l.err
	}
	return float64(l.count) / elapsed.Seconds(), err
}
