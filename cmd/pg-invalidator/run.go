package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/mapping"
)

// minReadyWindow is the shortest --ready-window. Redis is pinged every third
// of the window (at most every 5s); below a second, /readyz would flap on
// ordinary scheduling delays.
const minReadyWindow = time.Second

func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	metricsAddr := fs.String("metrics-addr", "", "host:port to serve /metrics, /healthz and /readyz on, such as 127.0.0.1:9187 (default: none)")
	resync := fs.Bool("resync", false, `when the replication slot is lost, recreate it and flush every key the rules can render, instead of stopping (default: [recovery] on_slot_lost in the rules file, else stop)`)
	readyWindow := fs.Duration("ready-window", 30*time.Second, "with --metrics-addr: /readyz answers 503 once a Redis target has not answered, a batch has waited on it with nothing applied, or a canary has been out, for this long")
	dryRun := fs.Bool("dry-run", false, "print each transaction's commands as JSON lines on stdout instead of applying them; uses a temporary slot, no Redis, and changes nothing")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pg-invalidator run [flags]

Streams logical replication from PostgreSQL and deletes or increments the
Redis keys that rules.toml derives from each changed row. It creates the
publication and the replication slot when they are missing, validates the
rules against the live schema first, and refuses to start on any problem.
It waits out an unreachable PostgreSQL or Redis. SIGHUP reloads the rules
file (validated first; on failure the old rules stay). SIGINT or SIGTERM
stops it.
With --metrics-addr it serves Prometheus metrics on /metrics, liveness on
/healthz and readiness on /readyz: ready while it streams and every Redis
target answers and applies within --ready-window, and the end-to-end
canary comes back within it; otherwise 503 and every reason, one a line.
A lost replication slot stops it with a message that says what to do;
with --resync it recreates the slot, flushes every key the rules can
render, and streams on.
With --dry-run it streams from a temporary slot and prints each
transaction's commands as JSON lines on stdout, touching neither Redis nor
the real slot; only transactions committed after it starts are shown.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *readyWindow < minReadyWindow {
		return fmt.Errorf("--ready-window %s: want a duration of at least %s, such as 30s", *readyWindow, minReadyWindow)
	}
	logger, err := c.newLogger(stderr)
	if err != nil {
		return err
	}
	cfg, err := c.daemonConfig(logger, !*dryRun)
	if err != nil {
		return err
	}
	cfg.MetricsAddr = *metricsAddr
	cfg.ReadyRedisWithin = *readyWindow
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "resync" { // the flag, when given, overrides the file
			cfg.Resync = *resync
		}
	})
	if *dryRun {
		cfg.DryRun, cfg.DryRunOut = true, stdout
		return daemon.Run(ctx, cfg)
	}

	// SIGHUP re-reads the rules file; the daemon validates it and swaps it
	// in between transactions, or keeps the old rules and logs why.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case reload <- struct{}{}:
				default: // a reload is already pending
				}
			}
		}
	}()
	cfg.Reload = reload
	cfg.LoadRules = func() (*mapping.Rules, error) {
		f, err := config.Load(c.config) // the whole file, so that a reload reports what a start would
		if err != nil {
			return nil, err
		}
		return f.Rules, nil
	}
	return daemon.Run(ctx, cfg)
}
