package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/redact"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/migrations"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// demoName is the demo's replication slot and publication. It is its own, so
// that the demo never uses, nor drops, those of a daemon that runs for real.
const demoName = "pg_invalidator_demo"

// cleanupTimeout bounds what the demo spends removing what it created, also
// after Ctrl-C.
const cleanupTimeout = 30 * time.Second

func demoCommand(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rulesPath := fs.String("config", "rules.toml", "rules file (the built-in example when this file does not exist)")
	logLevel := fs.String("log-level", "warn", "the daemon's log level")
	pgFlag := fs.String("postgres", "", "run on this PostgreSQL (wal_level=logical, a role that may replicate and create tables) instead of a throwaway one")
	redisFlag := fs.String("redis", "", "run on this Redis instead of a throwaway one")
	reuse := fs.Bool("reuse-tables", false, "with --postgres: run on products and categories tables that already exist; the demo changes their rows, "+
		"sets REPLICA IDENTITY FULL on products and leaves them in place")
	wait := fs.Bool("wait", false, "after the scripted writes, keep the daemon running until Ctrl-C, for writes of your own")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pg-invalidator demo [flags]

Starts a throwaway PostgreSQL (wal_level=logical) and Redis from the local
binaries, applies the example schema, runs the daemon on the rules file, fills
the cache the way an application would, makes a few writes, and shows each
key as the daemon invalidates it, with the time from COMMIT to the key being
gone.

It never uses DATABASE_URL, REDIS_URL or the URLs in the rules file. To run
it on servers of your own, name them with --postgres and --redis. There it
creates the example tables (it refuses when products or categories exist,
unless --reuse-tables), a replication slot and a publication named
pg_invalidator_demo, and a few keys (it refuses when one exists), and removes
all of them when it ends, also on Ctrl-C or SIGTERM.

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
	if *reuse && *pgFlag == "" {
		fmt.Fprintln(stderr, "--reuse-tables needs --postgres: a throwaway PostgreSQL has no tables to reuse")
		return errUsage
	}
	rules, source, err := demoRules(*rulesPath)
	if err != nil {
		return err
	}

	d := &demo{out: stdout, pgURL: *pgFlag, redisURL: *redisFlag, reuse: *reuse}
	defer func() {
		if cerr := d.close(ctx); err == nil {
			err = cerr
		}
	}()
	if note := ignoredEnvNote(*pgFlag, *redisFlag); note != "" {
		fmt.Fprintln(stdout, note)
	}
	if err := d.startServers(ctx); err != nil {
		return err
	}
	if err := d.connect(ctx); err != nil {
		return err
	}
	if err := d.prepare(ctx); err != nil {
		return err
	}
	if len(d.createdTables) > 0 || d.pgOwned {
		fmt.Fprintf(stdout, "Applied migrations/ (products, categories). Rules from %s:\n", source)
	} else {
		fmt.Fprintf(stdout, "Using your products and categories (--reuse-tables). Rules from %s:\n", source)
	}
	for _, r := range rules.Rules.List {
		fmt.Fprintf(stdout, "  %s.%s  del=%v incr=%v\n", r.Schema, r.Table, r.Del, r.Incr)
	}

	dctx, stopDaemon := context.WithCancel(ctx)
	daemonDone := make(chan error, 1)
	d.stopDaemon = func() { stopDaemon(); <-daemonDone }
	go func() {
		daemonDone <- daemon.Run(dctx, daemon.Config{
			Rules:       rules.Rules,
			PostgresURL: d.pgURL,
			Targets:     []daemon.Target{{Name: daemon.DefaultTarget, Redis: invalidator.Options{URL: d.redisURL}}},
			Slot:        demoName,
			Publication: demoName,
			Logger:      slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
		})
	}()
	if err := d.waitStreaming(ctx, demoName, daemonDone); err != nil {
		return d.interrupted(ctx, err)
	}
	fmt.Fprintln(stdout, "The daemon is streaming. Now the application caches a few things and writes:")
	if err := d.script(ctx); err != nil {
		return d.interrupted(ctx, err)
	}
	fmt.Fprintln(stdout, "\nEvery cached key derived from a changed row was invalidated. Try your own rules with: pg-invalidator run --config rules.toml")
	if !*wait {
		return nil
	}
	fmt.Fprintf(stdout, "\nThe daemon keeps running. Write to products or categories and watch the keys, for example:\n"+
		"  psql '%s' -c \"UPDATE products SET price = price + 1 WHERE id = 3\"\n"+
		"  redis-cli -u '%s' GET cache:version:products\n"+
		"Press Ctrl-C to stop; the demo then removes what it created.\n",
		redact.URL(d.pgURL), redact.URL(d.redisURL))
	select {
	case <-ctx.Done():
		return nil
	case err := <-daemonDone:
		daemonDone <- err // for stopDaemon
		if err == nil || ctx.Err() != nil {
			return nil // stopped by the Ctrl-C it was waiting for
		}
		return fmt.Errorf("the daemon stopped: %w", err)
	}
}

// ignoredEnvNote is the line that says which of DATABASE_URL and REDIS_URL
// the demo ignores, and how to use them; "" when it ignores none.
func ignoredEnvNote(pgFlag, redisFlag string) string {
	var names, flags []string
	if os.Getenv("DATABASE_URL") != "" && pgFlag == "" {
		names, flags = append(names, "DATABASE_URL"), append(flags, `--postgres "$DATABASE_URL"`)
	}
	if os.Getenv("REDIS_URL") != "" && redisFlag == "" {
		names, flags = append(names, "REDIS_URL"), append(flags, `--redis "$REDIS_URL"`)
	}
	if len(names) == 0 {
		return ""
	}
	return fmt.Sprintf("The demo ignores %s and uses throwaway servers; to run it on yours, say so: pg-invalidator demo %s",
		strings.Join(names, " and "), strings.Join(flags, " "))
}

// demoRules loads the rules file, or the built-in example when it is absent.
func demoRules(path string) (*config.File, string, error) {
	if _, err := os.Stat(path); err == nil {
		rules, err := config.Load(path)
		return rules, path, err
	}
	rules, err := config.Parse("rules.toml (built in)", migrations.Rules)
	return rules, "the built-in rules.toml", err
}

// demo is one run of the demo. On servers it did not start (pgOwned and
// redisOwned false) it records what it creates, and close removes exactly
// that.
type demo struct {
	out      io.Writer
	pgURL    string
	redisURL string
	reuse    bool // write to example tables that exist already

	pgOwned    bool // pgURL is a throwaway server the demo started
	redisOwned bool // redisURL is a throwaway server the demo started

	pg  *pgx.Conn
	rdb *redis.Client

	createdTables []string // example tables the demo created on a server it did not start
	createdKeys   []string // keys the demo may create on a Redis it did not start
	replication   bool     // the daemon may have created demoName's slot and publication on a server the demo did not start

	stopDaemon func()   // stops the daemon and waits for it; nil: not started
	servers    []func() // stop the throwaway servers
}

// interrupted turns err into the demo's error: when ctx ended it, the user
// stopped the demo.
func (d *demo) interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		fmt.Fprintln(d.out, "\nInterrupted.")
		return errors.New("demo interrupted")
	}
	return err
}

func (d *demo) startServers(ctx context.Context) error {
	switch {
	case d.pgURL == "" && d.redisURL == "":
		fmt.Fprintln(d.out, "Starting a throwaway PostgreSQL and Redis from local binaries...")
	case d.pgURL == "":
		fmt.Fprintln(d.out, "Starting a throwaway PostgreSQL from local binaries...")
	case d.redisURL == "":
		fmt.Fprintln(d.out, "Starting a throwaway Redis from local binaries...")
	}
	if d.pgURL == "" {
		pg, err := localsvc.StartPostgres(ctx, localsvc.PostgresOptions{})
		if err != nil {
			return d.interrupted(ctx, fmt.Errorf("start a throwaway postgres (or name one with --postgres): %w", err))
		}
		d.servers = append(d.servers, func() { pg.Close() })
		d.pgURL, d.pgOwned = pg.URL(), true
	}
	if d.redisURL == "" {
		rd, err := localsvc.StartRedis(ctx)
		if err != nil {
			return d.interrupted(ctx, fmt.Errorf("start a throwaway redis (or name one with --redis): %w", err))
		}
		d.servers = append(d.servers, func() { rd.Close() })
		d.redisURL, d.redisOwned = rd.URL(), true
	}
	fmt.Fprintf(d.out, "  PostgreSQL %s%s\n  Redis      %s%s\n",
		redact.URL(d.pgURL), ownership(d.pgOwned), redact.URL(d.redisURL), ownership(d.redisOwned))
	return nil
}

func ownership(throwaway bool) string {
	if throwaway {
		return "  (throwaway)"
	}
	return "  (yours: the demo removes what it creates there)"
}

func (d *demo) connect(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, d.pgURL)
	if err != nil {
		return d.interrupted(ctx, fmt.Errorf("connect to postgres: %w", redact.Error(err, d.pgURL)))
	}
	d.pg = conn
	opts, err := redis.ParseURL(d.redisURL)
	if err != nil {
		return fmt.Errorf("parse redis url %s: %w", redact.URL(d.redisURL), redact.Error(err, d.redisURL))
	}
	opts.DisableIdentity = true
	d.rdb = redis.NewClient(opts)
	if err := d.rdb.Ping(ctx).Err(); err != nil {
		return d.interrupted(ctx, fmt.Errorf("connect to redis %s: %w", redact.URL(d.redisURL), redact.Error(err, d.redisURL)))
	}
	return nil
}

// prepare installs the example schema, after checking that the demo will
// change nothing on the user's servers that it does not then remove.
func (d *demo) prepare(ctx context.Context) error {
	if !d.redisOwned {
		id, err := replication.ReadIdentity(ctx, d.pg)
		if err != nil {
			return d.interrupted(ctx, err)
		}
		// The daemon's memory that the demo's slot existed goes too, with
		// its last reading of the catalog, its notes of a resync and of
		// where it invalidated, and its canary's key, which exists while a
		// canary is out: one may be when the demo stops.
		keys := append(demoKeys(), daemon.SlotMarker(id.SystemID, id.Database, demoName), daemon.CatalogMarker(id.SystemID, id.Database, demoName),
			daemon.ResyncMarker(id.SystemID, id.Database, demoName), daemon.InvalidatedMarker(id.SystemID, id.Database, demoName),
			daemon.CanaryKey("", demoName))
		n, err := d.rdb.Exists(ctx, keys...).Result()
		if err != nil {
			return d.interrupted(ctx, fmt.Errorf("look for the demo's keys in redis: %w", err))
		}
		if n > 0 {
			var held []string
			for _, k := range keys {
				if d.rdb.Exists(ctx, k).Val() > 0 {
					held = append(held, k)
				}
			}
			return fmt.Errorf("redis %s already holds %s; the demo sets and deletes these keys and does not touch keys it did not create: "+
				"name a Redis database without them, for example --redis redis://host:6379/15",
				redact.URL(d.redisURL), strings.Join(held, ", "))
		}
		d.createdKeys = keys
	}
	if !d.pgOwned {
		slot, err := replication.SlotState(ctx, d.pg, demoName)
		if err != nil {
			return d.interrupted(ctx, err)
		}
		pub, err := replication.PublicationExists(ctx, d.pg, demoName)
		if err != nil {
			return d.interrupted(ctx, err)
		}
		if slot.Exists || pub {
			return fmt.Errorf("the server already has the demo's replication slot or publication %s: another demo runs on it, or one was killed before it could remove them. "+
				"If no demo runs, remove them with: %s", demoName, replication.TeardownSQL(demoName, demoName))
		}
		existing, err := migrations.ExistingTables(ctx, d.pg)
		if err != nil {
			return d.interrupted(ctx, err)
		}
		if len(existing) > 0 && !d.reuse {
			return fmt.Errorf("the database already has %s; the demo creates the example tables itself and does not write to tables it did not create. "+
				"Name an empty database (createdb pg_invalidator_demo, then --postgres .../pg_invalidator_demo), "+
				"or pass --reuse-tables to let the demo write to these (it changes their rows, sets REPLICA IDENTITY FULL on products, and leaves them in place)",
				strings.Join(existing, " and "))
		}
		d.replication = true
	}
	created, err := migrations.Install(ctx, d.pg)
	if !d.pgOwned {
		d.createdTables = created
	}
	if err != nil {
		return d.interrupted(ctx, err)
	}
	return nil
}

// close stops the daemon, removes from the user's servers what the demo
// created there, and stops the throwaway servers. It runs on a fresh
// context: ctx may have ended with Ctrl-C, and the cleanup must still
// happen. It reports what it could not remove.
func (d *demo) close(ctx context.Context) error {
	if d.stopDaemon != nil {
		d.stopDaemon()
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var errs []error
	if d.replication || len(d.createdTables) > 0 {
		removed, err := d.cleanPostgres(cctx)
		if len(removed) > 0 {
			fmt.Fprintf(d.out, "Removed from your PostgreSQL: %s.\n", strings.Join(removed, ", "))
		}
		errs = append(errs, err)
	}
	if d.pg != nil {
		d.pg.Close(cctx)
	}
	if d.rdb != nil {
		if len(d.createdKeys) > 0 {
			removed, err := d.cleanRedis(cctx)
			if len(removed) > 0 {
				fmt.Fprintf(d.out, "Removed from your Redis: %s.\n", strings.Join(removed, ", "))
			}
			errs = append(errs, err)
		}
		d.rdb.Close()
	}
	for i := len(d.servers) - 1; i >= 0; i-- {
		d.servers[i]()
	}
	return errors.Join(errs...)
}

// cleanRedis deletes the keys the demo created that are left (the daemon
// deleted most; the version key stays) and returns them.
func (d *demo) cleanRedis(ctx context.Context) (removed []string, err error) {
	for _, k := range d.createdKeys {
		n, err := d.rdb.Del(ctx, k).Result()
		if err != nil {
			return removed, fmt.Errorf("delete the demo's keys from redis: %w; delete them by hand: DEL %s", err, strings.Join(d.createdKeys, " "))
		}
		if n > 0 {
			removed = append(removed, "key "+k)
		}
	}
	return removed, nil
}

// cleanPostgres drops the slot, the publication and the tables the demo
// created, on a connection of its own: the demo's may have been closed by an
// interrupted query.
func (d *demo) cleanPostgres(ctx context.Context) (removed []string, err error) {
	conn, err := pgx.Connect(ctx, d.pgURL)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres to remove what the demo created: %w; remove it by hand with: %s",
			redact.Error(err, d.pgURL), d.teardownSQL())
	}
	defer conn.Close(ctx)
	if d.replication {
		dropped, err := replication.DropSlot(ctx, conn, demoName)
		if err != nil {
			return removed, fmt.Errorf("%w; remove it by hand with: %s", err, replication.TeardownSQL(demoName, demoName))
		}
		if dropped {
			removed = append(removed, "replication slot "+demoName)
		}
		dropped, err = replication.DropPublication(ctx, conn, demoName)
		if err != nil {
			return removed, err
		}
		if dropped {
			removed = append(removed, "publication "+demoName)
		}
	}
	if err := migrations.Uninstall(ctx, conn, d.createdTables); err != nil {
		return removed, err
	}
	for _, t := range d.createdTables {
		removed = append(removed, "table "+t)
	}
	return removed, nil
}

// teardownSQL is what removes by hand what cleanPostgres removes.
func (d *demo) teardownSQL() string {
	var stmts []string
	if d.replication {
		stmts = append(stmts, replication.TeardownSQL(demoName, demoName))
	}
	if drop := migrations.UninstallSQL(d.createdTables); drop != "" {
		stmts = append(stmts, drop+";")
	}
	return strings.Join(stmts, " ")
}

func (d *demo) waitStreaming(ctx context.Context, slot string, daemonDone chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		active, err := replication.SlotStreaming(ctx, d.pg, slot)
		if err == nil && active {
			return nil
		}
		select {
		case err := <-daemonDone:
			daemonDone <- err // for stopDaemon
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

var steps = []step{
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

// demoKeys are the keys the script sets or increments.
func demoKeys() []string {
	var keys []string
	for _, s := range steps {
		for _, k := range append(slices.Clone(s.keys), s.incr) {
			if k != "" && !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

func (d *demo) script(ctx context.Context) error {
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
