package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/redact"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/migrations"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

func demoCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "rules.toml", "rules file (the built-in example when this file does not exist)")
	logLevel := fs.String("log-level", "warn", "the daemon's log level")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pg-invalidator demo [flags]

Starts a throwaway PostgreSQL (wal_level=logical) and Redis from the local
binaries, or uses DATABASE_URL and REDIS_URL when both are set, applies the
example schema, runs the daemon on the rules file, fills the cache the way
an application would, makes a few writes, and shows each key as the daemon
invalidates it, with the time from COMMIT to the key being gone.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	d := &demo{out: stdout}
	defer d.close()

	pgURL, redisURL := os.Getenv("DATABASE_URL"), os.Getenv("REDIS_URL")
	if pgURL == "" || redisURL == "" {
		fmt.Fprintln(stdout, "Starting a throwaway PostgreSQL and Redis from local binaries...")
		pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{})
		if err != nil {
			return fmt.Errorf("start postgres: %w", err)
		}
		d.closers = append(d.closers, func() { pg.Close() })
		rd, err := localsvc.StartRedis(ctx)
		if err != nil {
			return fmt.Errorf("start redis: %w", err)
		}
		d.closers = append(d.closers, func() { rd.Close() })
		pgURL, redisURL = pg.URL(), rd.URL()
	}
	fmt.Fprintf(stdout, "  PostgreSQL %s\n  Redis      %s\n", redact.URL(pgURL), redact.URL(redisURL))

	rules, source, err := demoRules(*config)
	if err != nil {
		return err
	}
	if err := d.connect(ctx, pgURL, redisURL); err != nil {
		return err
	}
	if err := d.migrate(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Applied migrations/ (products, categories). Rules from %s:\n", source)
	for _, r := range rules.Rules.List {
		fmt.Fprintf(stdout, "  %s.%s  del=%v incr=%v\n", r.Schema, r.Table, r.Del, r.Incr)
	}

	dctx, stopDaemon := context.WithCancel(ctx)
	daemonDone := make(chan error, 1)
	go func() {
		daemonDone <- daemon.Run(dctx, daemon.Config{
			Rules:       rules.Rules,
			PostgresURL: pgURL,
			Targets:     []daemon.Target{{Name: daemon.DefaultTarget, Redis: invalidator.Options{URL: redisURL}}},
			Slot:        rules.Postgres.Slot,
			Publication: rules.Postgres.Publication,
			Logger:      slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
		})
	}()
	defer func() { stopDaemon(); <-daemonDone }()
	if err := d.waitStreaming(ctx, rules.Postgres.Slot, daemonDone); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "The daemon is streaming. Now the application caches a few things and writes:")
	return d.script(ctx)
}

// demoRules loads the rules file, or the built-in example when it is absent.
func demoRules(path string) (*config.File, string, error) {
	if _, err := os.Stat(path); err == nil {
		rules, err := config.Load(path)
		return rules, path, err
	}
	rules, err := config.Parse("rules.toml (built in)", pginvalidator.ExampleRules)
	return rules, "the built-in rules.toml", err
}

type demo struct {
	out     io.Writer
	pg      *pgx.Conn
	rdb     *redis.Client
	closers []func()
}

func (d *demo) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
}

func (d *demo) connect(ctx context.Context, pgURL, redisURL string) error {
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", redact.Error(err, pgURL))
	}
	d.pg = conn
	d.closers = append(d.closers, func() { conn.Close(context.Background()) })
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return fmt.Errorf("parse redis url %s: %w", redact.URL(redisURL), redact.Error(err, redisURL))
	}
	opts.DisableIdentity = true
	d.rdb = redis.NewClient(opts)
	d.closers = append(d.closers, func() { d.rdb.Close() })
	return nil
}

func (d *demo) migrate(ctx context.Context) error {
	stmts, err := migrations.SQL()
	if err != nil {
		return err
	}
	for _, s := range stmts {
		if _, err := d.pg.Exec(ctx, s); err != nil {
			return fmt.Errorf("apply migrations: %w", err)
		}
	}
	return nil
}

func (d *demo) waitStreaming(ctx context.Context, slot string, daemonDone <-chan error) error {
	if slot == "" {
		slot = replication.DefaultSlot
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		active, err := replication.SlotStreaming(ctx, d.pg, slot)
		if err == nil && active {
			return nil
		}
		select {
		case err := <-daemonDone:
			if err == nil {
				err = errors.New("the daemon stopped")
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("the daemon did not start streaming within 60s")
}

// step is one write of the demo and the keys it should invalidate.
type step struct {
	say  string
	sql  string
	keys []string // cached before the write; each should be gone after it
	incr string   // a version key that should go up
}

func (d *demo) script(ctx context.Context) error {
	steps := []step{
		{say: "Change the price of product 1", sql: "UPDATE products SET price = price + 1 WHERE id = 1",
			keys: []string{"product:1", "product-list:category:1"}, incr: "cache:version:products"},
		{say: "Move product 2 from category 1 to category 2", sql: "UPDATE products SET category_id = 2 WHERE id = 2",
			keys: []string{"product:2", "product-list:category:1", "product-list:category:2"}, incr: "cache:version:products"},
		{say: "Insert a product into category 3", sql: "INSERT INTO products (id, category_id, name, price) VALUES (100, 3, 'Demo lamp', 19.90)",
			keys: []string{"product:100", "product-list:category:3"}, incr: "cache:version:products"},
		{say: "Delete product 100", sql: "DELETE FROM products WHERE id = 100",
			keys: []string{"product:100", "product-list:category:3"}, incr: "cache:version:products"},
		{say: "Rename category 2", sql: "UPDATE categories SET name = name || ' (new)' WHERE id = 2",
			keys: []string{"category:2", "product-list:category:2"}},
	}
	for _, s := range steps {
		// The application's cache-aside code filled these on earlier reads.
		for _, k := range s.keys {
			if err := d.rdb.Set(ctx, k, "cached value", time.Hour).Err(); err != nil {
				return fmt.Errorf("fill the cache: %w", err)
			}
		}
		var before int64
		if s.incr != "" {
			before, _ = d.rdb.Get(ctx, s.incr).Int64()
		}
		fmt.Fprintf(d.out, "\n%s\n  SQL> %s\n", s.say, s.sql)
		if _, err := d.pg.Exec(ctx, s.sql); err != nil {
			return fmt.Errorf("%s: %w", s.sql, err)
		}
		committed := time.Now()
		for _, k := range s.keys {
			took, err := d.waitGone(ctx, k, committed)
			if err != nil {
				return err
			}
			fmt.Fprintf(d.out, "  DEL  %-28s gone %s after COMMIT\n", k, took.Round(10*time.Microsecond))
		}
		if s.incr != "" {
			after, err := d.waitAbove(ctx, s.incr, before)
			if err != nil {
				return err
			}
			fmt.Fprintf(d.out, "  INCR %-28s %d -> %d\n", s.incr, before, after)
		}
	}
	fmt.Fprintln(d.out, "\nEvery cached key derived from a changed row was invalidated. Try your own rules with: pg-invalidator run --config rules.toml")
	return nil
}

func (d *demo) waitGone(ctx context.Context, key string, since time.Time) (time.Duration, error) {
	for time.Since(since) < 10*time.Second {
		n, err := d.rdb.Exists(ctx, key).Result()
		if err != nil {
			return 0, fmt.Errorf("check %s: %w", key, err)
		}
		if n == 0 {
			return time.Since(since), nil
		}
		time.Sleep(100 * time.Microsecond)
	}
	return 0, fmt.Errorf("%s was still cached 10s after the commit: the daemon did not invalidate it", key)
}

func (d *demo) waitAbove(ctx context.Context, key string, before int64) (int64, error) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		v, err := d.rdb.Get(ctx, key).Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return 0, fmt.Errorf("read %s: %w", key, err)
		}
		if v > before {
			return v, nil
		}
		time.Sleep(100 * time.Microsecond)
	}
	return 0, fmt.Errorf("%s did not go up within 10s of the commit", key)
}
