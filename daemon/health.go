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
// process is alive) and /readyz (streaming, and Redis answered within the
// last within; a ready body names any degraded Redis master, and any
// standby given up on, after "ready").
func (m *metrics) handler(within time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ok, why := m.ready(time.Now(), within)
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, why)
			return
		}
		fmt.Fprintln(w, "ready")
		for _, note := range degradedNotes(m.targets) {
			fmt.Fprintln(w, note)
		}
		if m.gate != nil {
			for _, note := range m.gate.notes() {
				fmt.Fprintln(w, note)
			}
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

// ready says whether /readyz should answer 200 and, if not, why.
func (m *metrics) ready(now time.Time, within time.Duration) (bool, string) {
	as := make([]answered, len(m.targets))
	for i, t := range m.targets {
		as[i] = answered{name: t.name, at: t.answered.Load()}
	}
	ok, why := readiness(now, m.streaming.Load(), as, within)
	if reasons := m.cover.reasons(); ok && len(reasons) > 0 {
		return false, strings.Join(reasons, "\n") // a rule table not covered: see coverage.go
	}
	return ok, why
}

// answered is when a target's Redis last answered (Unix ns); 0: never.
type answered struct {
	name string
	at   int64
}

// readiness is ready: streaming, and every target's Redis answered within
// the last within. The first target at fault is named, unless it is the
// default alone: "redis target eu has not answered for 12s".
func readiness(now time.Time, streaming bool, targets []answered, within time.Duration) (bool, string) {
	if !streaming {
		return false, "not streaming from postgresql"
	}
	for _, t := range targets {
		who := "redis"
		if len(targets) > 1 || t.name != DefaultTarget {
			who = "redis target " + t.name
		}
		if t.at == 0 {
			return false, who + " has not answered yet"
		}
		if age := now.Sub(time.Unix(0, t.at)); age > within {
			return false, fmt.Sprintf("%s has not answered for %s", who, age.Round(100*time.Millisecond))
		}
	}
	return true, ""
}
