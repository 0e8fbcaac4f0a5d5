package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/mapping"
)

func checkCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pg-invalidator check [flags]

Validates the rules file, then the server and the live schema, without
starting replication or changing anything:

  - the server: PostgreSQL 13 or later, wal_level = logical, a free
    replication slot (the daemon's own slot, once it exists, counts as
    free) and a free WAL sender (max_replication_slots, max_wal_senders);
  - the role: it may replicate (REPLICATION, or superuser), and it has
    USAGE on the rule tables' schemas and SELECT on the tables;
  - the rules: every rule table exists and can be published, every
    template column exists, and every column a rule needs on update or
    delete is in the table's replica identity.

Prints every problem found, each with its fix, and exits non-zero; or
prints what it found and exits 0 when all is well. run makes the same
checks before it creates anything. It does not retry: an unreachable
PostgreSQL fails.

With [postgres] replicas, it says of each standby named whether the
primary's pg_stat_replication shows it (a warning otherwise, with the
names it does show).

When a rule uses incr, it then reads maxmemory-policy from every Redis
master and warns where Redis may evict those version keys (allkeys-*), or
where the policy cannot be read (Redis down, CONFIG refused). Warnings do
not change the exit status.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger, err := c.newLogger(stderr)
	if err != nil {
		return err
	}
	cfg, err := c.daemonConfig(logger, false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	srv, err := daemon.Check(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "postgres: ok: %s\n", srv)
	if w := srv.SlotTimeoutWarning(); w != "" {
		fmt.Fprintf(stdout, "postgres: warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "%s: ok: %d rule(s) on %d table(s) match the live schema\n", c.config, len(cfg.Rules.List), len(cfg.Rules.Tables()))
	if err := checkStandbys(ctx, cfg, stdout); err != nil {
		return err
	}
	if err := checkFailoverCopies(ctx, cfg, stdout); err != nil {
		return err
	}
	c.checkEvictions(ctx, logger, cfg.Rules, stdout)
	return nil
}

// checkStandbys prints, for each standby [postgres] replicas names, ok or
// a warning: a standby that is not connected, or whose name is not the one
// in the primary's pg_stat_replication, holds invalidations back for
// replica_timeout and is then given up on. Warnings do not fail check: a
// standby may be restarting.
func checkStandbys(ctx context.Context, cfg daemon.Config, stdout io.Writer) error {
	standbys, err := daemon.CheckStandbys(ctx, cfg)
	if err != nil {
		return err
	}
	for _, s := range standbys {
		if s.Problem == "" {
			fmt.Fprintf(stdout, "standby %s: ok: invalidations wait until it has replayed each transaction\n", s.Name)
			continue
		}
		fmt.Fprintf(stdout, "warning: standby %s: %s; invalidations will wait for it up to replica_timeout, then go on without it until it catches up\n", s.Name, s.Problem)
	}
	return nil
}

// checkFailoverCopies prints, when the slot is a failover slot, whether
// each standby the URL names holds a usable copy of it: a failover to one
// that does not loses the slot. A warning, never a failure.
func checkFailoverCopies(ctx context.Context, cfg daemon.Config, stdout io.Writer) error {
	copies, warning, err := daemon.CheckFailoverCopies(ctx, cfg)
	if err != nil {
		return err
	}
	if warning != "" {
		fmt.Fprintf(stdout, "warning: failover slot: %s\n", warning)
	}
	for _, c := range copies {
		for _, p := range c.Problems {
			fmt.Fprintf(stdout, "warning: standby %s: %s\n", c.Addr, p)
		}
		switch {
		case c.Err != nil:
			fmt.Fprintf(stdout, "warning: standby %s: its copy of the failover slot cannot be read: %v\n", c.Addr, c.Err)
		case c.Ready:
			fmt.Fprintf(stdout, "standby %s: ok: holds a usable copy of the failover slot\n", c.Addr)
		default:
			fmt.Fprintf(stdout, "warning: standby %s holds no usable copy of the failover slot (%s): a failover to it now loses the slot; a new slot's copy becomes usable within about 30 s where sync_replication_slots is on\n", c.Addr, c.State)
		}
	}
	return nil
}

// checkEvictions prints, when a rule uses incr, the maxmemory-policy of
// every Redis master of every target: ok, or a warning where Redis may evict
// the version keys those rules increment, or where the policy could not be
// read. It never fails check: the rules and the schema are what check
// validates, and they do not need Redis (see docs/rules.md#eviction).
func (c *commonFlags) checkEvictions(ctx context.Context, logger *slog.Logger, rules *mapping.Rules, stdout io.Writer) {
	keys := daemon.IncrKeys(rules)
	if keys == "" {
		return // deletes and LSN version keys: an eviction sends nothing back
	}
	cfg, err := c.daemonConfig(logger, true) // now with the Redis URL and passwords
	if err != nil {
		fmt.Fprintf(stdout, "redis: warning: maxmemory-policy not checked: %v\n", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, r := range daemon.CheckEvictions(ctx, cfg) {
		where := "redis"
		if len(cfg.Targets) > 1 || r.Target != daemon.DefaultTarget {
			where += " target " + r.Target
		}
		if r.Addr != "" {
			where += " " + r.Addr
		}
		if r.Safe() {
			fmt.Fprintf(stdout, "%s: ok: maxmemory-policy %s\n", where, r.Policy)
		} else {
			fmt.Fprintf(stdout, "%s: warning: %s\n", where, r.Warning(keys))
		}
	}
}
