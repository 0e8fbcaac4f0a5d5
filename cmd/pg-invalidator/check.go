package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/pg-invalidator/pg-invalidator/daemon"
)

func checkCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pg-invalidator check [flags]

Validates the rules file, then the live schema, without starting
replication: every rule table exists and can be published, every template
column exists, and every column a rule needs on update or delete is in the
table's replica identity. Prints every problem found and exits non-zero, or
exits 0 when all is well. It does not retry: an unreachable PostgreSQL fails.

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
	if err := daemon.Check(ctx, cfg); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok: %d rule(s) on %d table(s) match the live schema\n", c.config, len(cfg.Rules.List), len(cfg.Rules.Tables()))
	return nil
}
