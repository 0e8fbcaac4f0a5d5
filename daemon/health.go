package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// serveMetrics listens on cfg.MetricsAddr and serves /metrics, /healthz and
// /readyz, and polls the slot and Redis for them, until ctx ends. Its
// goroutines are on wg: the caller cancels ctx, then waits. A listen error
// is returned at once: retrying cannot free the port.
func serveMetrics(ctx context.Context, wg *sync.WaitGroup, cfg Config, m *metrics, ts fanout) error {
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("listen for metrics: %w", err)
	}
	srv := &http.Server{Handler: m.handler(cfg.ReadyRedisWithin), ReadHeaderTimeout: 5 * time.Second}
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Error("metrics server stopped", "err", err)
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close() // a scrape still running after a second is cut off
		}
	})
	wg.Go(func() { m.pollSlot(ctx, cfg) })
	wg.Go(func() { m.pingRedis(ctx, ts, min(cfg.ReadyRedisWithin/3, 5*time.Second)) })
	cfg.Logger.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}

// handler serves /metrics in the Prometheus text format, /healthz (the
// process is alive) and /readyz: 200 and "ready" when notReady finds
// nothing (then a line per degraded Redis master and per standby given up
// on, if any), else 503 and every reason, one a line.
func (m *metrics) handler(within time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if why := m.notReady(time.Now(), within); len(why) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, line := range why {
				fmt.Fprintln(w, line)
			}
			return
		}
		fmt.Fprintln(w, "ready")
		for _, note := range degradedNotes(m.targets) {
			fmt.Fprintln(w, note)
		}
		if gate := m.gate.Load(); gate != nil {
			for _, note := range gate.notes() {
				fmt.Fprintln(w, note)
			}
		}
		if vis := m.vis.Load(); vis != nil {
			for _, note := range vis.notes(time.Now()) {
				fmt.Fprintln(w, note)
			}
		}
		m.slotMu.Lock()
		copies := m.copies
		m.slotMu.Unlock()
		for _, note := range failoverNotes(copies) {
			fmt.Fprintln(w, note)
		}
	})
	return mux
}

// pingRedis pings every target every interval, so that readiness and
// target_up know which Redis answers while no writes arrive, and which one
// holds the acknowledgement back.
func (m *metrics) pingRedis(ctx context.Context, ts fanout, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, every)
		_ = ts.Ping(pctx) // each target records its own outcome
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readyCheck returns the reasons, one line each, why the daemon is not
// ready at now; none when it is.
type readyCheck func(now time.Time) []string

// addReadyCheck makes /readyz report c's reasons too, after its own. Call
// it before the metrics server starts.
func (m *metrics) addReadyCheck(c readyCheck) { m.readyChecks = append(m.readyChecks, c) }

// notReady returns every reason why /readyz should not answer 200, one line
// each, in this order: the stream, each Redis target in config order, then
// the checks added with addReadyCheck. None: ready.
func (m *metrics) notReady(now time.Time, within time.Duration) []string {
	ts := make([]targetState, len(m.targets))
	for i, t := range m.targets {
		since, err := t.inv.Waiting()
		ts[i] = targetState{name: t.name, answered: t.answered.Load(), waitingSince: since, lastErr: err}
	}
	why := readiness(now, m.streaming.Load(), ts, within)
	why = append(why, m.cover.reasons()...) // rule tables not covered: see coverage.go
	for _, c := range m.readyChecks {
		why = append(why, c(now)...)
	}
	return why
}

// targetState is what readiness knows of one Redis target.
type targetState struct {
	name     string
	answered int64 // when its Redis last answered a ping or an Apply (Unix ns); 0: never
	// waitingSince is when the batch in progress on it began, or last got
	// commands applied; of two in progress (the pipeline's and the catalog
	// watch's), the one that has waited longest. Zero: no batch is waiting
	// on it.
	waitingSince time.Time
	lastErr      error // the last error that batch was retried after; nil: none
}

// readiness returns why the daemon is not ready, one line per reason: it
// is not streaming; a target's Redis has not answered (a ping or a batch)
// within the last within; a batch has waited on a target longer than
// within with nothing applied, even though it answers PING (writes paused
// or refused: OOM, NOPERM, READONLY, a WAIT short of replicas). A target
// is named unless it is the default alone: "redis target eu has not
// answered for 12s".
func readiness(now time.Time, streaming bool, targets []targetState, within time.Duration) []string {
	var why []string
	if !streaming {
		why = append(why, "not streaming from postgresql")
	}
	for _, t := range targets {
		who := "redis"
		if len(targets) > 1 || t.name != DefaultTarget {
			who = "redis target " + t.name
		}
		switch age := now.Sub(time.Unix(0, t.answered)); {
		case t.answered == 0:
			why = append(why, who+" has not answered yet")
		case age > within:
			why = append(why, fmt.Sprintf("%s has not answered for %s", who, age.Round(100*time.Millisecond)))
		}
		if t.waitingSince.IsZero() {
			continue
		}
		if idle := now.Sub(t.waitingSince); idle > within {
			line := fmt.Sprintf("%s has applied nothing for %s", who, idle.Round(100*time.Millisecond))
			if t.lastErr != nil {
				line += ": " + oneLine(t.lastErr.Error())
			}
			why = append(why, line)
		}
	}
	return why
}

// oneLine puts s on one line, so that a reason stays one line of /readyz.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
