package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/daemon"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

func setupCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		config, postgres, role string
		apply, redisOnly       bool
	)
	fs.StringVar(&config, "config", "rules.toml", "rules file")
	fs.StringVar(&postgres, "postgres", "", "PostgreSQL URL of a role that may make these changes, such as a superuser (default: $DATABASE_URL, then [postgres] url in the rules file)")
	fs.StringVar(&role, "role", "pginvalidator", "the role the daemon will log in as (PostgreSQL reserves names that start with pg_)")
	fs.BoolVar(&apply, "apply", false, "run the SQL, in one transaction, instead of printing it")
	fs.BoolVar(&redisOnly, "redis-acl", false, "print only the Redis ACL, without connecting to PostgreSQL")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pg-invalidator setup [flags]

Prints the SQL that prepares PostgreSQL for the rules, so that the daemon can
run as a role with no more rights than it needs. It reads the rules and the
live schema, and prints only what is missing:

  - the role (--role): LOGIN and REPLICATION, USAGE on the rule tables'
    schemas and SELECT on the tables. A new role gets no password.
  - REPLICA IDENTITY FULL for each table whose rules use, on update or
    delete, a column outside its replica identity (what "check" reports),
    or whose identity would make its UPDATE and DELETE fail once published.
    For a partitioned table, each leaf partition is altered.
  - the publication named in the rules file, for the rule tables and every
    kind of change, or what an existing one lacks. The connecting role owns
    a publication it creates; the daemon only checks it.

First it checks that the server can stream at all: PostgreSQL 13 or
later, wal_level = logical, a free replication slot and a free WAL sender.
Those take a configuration change and a restart, which a transaction
cannot make: each problem is printed with its fix, and nothing is done.

With --apply it runs the same statements in one transaction and prints
them. Running it again prints "nothing to do" for each part already in
place. The daemon creates its replication slot itself on first run.

Then it prints, as comments, the Redis ACL of the user the daemon logs in
as, for each target: the key patterns the rules' templates can render (and
the canary's), and the commands the daemon sends there, nothing more. With
--redis-acl it prints only that, ready to paste, and needs no PostgreSQL.

Problems it cannot fix, such as a missing table or column, are printed as
"check" prints them, and nothing is done.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if role == "" {
		return fmt.Errorf("--role is empty; name the role the daemon logs in as")
	}
	cfg, err := loadFile(config)
	if err != nil {
		return err
	}
	acls, err := redisACLs(cfg)
	if err != nil {
		return err
	}
	if redisOnly {
		printRedisACLs(stdout, acls, "")
		return nil
	}
	url := firstOf(postgres, os.Getenv("DATABASE_URL"), cfg.Postgres.URL)
	if url == "" {
		return fmt.Errorf("no PostgreSQL URL: pass --postgres, set DATABASE_URL, or set url in the [postgres] table of %s", config)
	}

	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := replication.ConnectSQL(ctx, url, cfg.Postgres.Timeout)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	// Plan and apply in one transaction, so that the plan is applied to
	// the catalog it was made from.
	tx, err := replication.BeginSetup(ctx, conn)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	p, err := planSetup(ctx, tx, cfg, role)
	if err != nil {
		return err
	}

	n := p.count()
	if apply && n > 0 {
		if err := replication.ApplySetup(ctx, tx, p.statements()); err != nil {
			return err
		}
	}

	p.print(stdout)
	switch {
	case n == 0:
		fmt.Fprintln(stdout, "-- Nothing to do.")
	case apply:
		fmt.Fprintf(stdout, "-- Applied %d statement(s) in one transaction.\n", n)
	default:
		fmt.Fprintf(stdout, "-- %d statement(s). Run them as a superuser, or run pg-invalidator setup --apply to run them in one transaction.\n", n)
	}
	fmt.Fprintf(stdout, "-- The daemon, logged in as %s, creates its replication slot %s on first run.\n", role, cfg.Postgres.Slot)
	printRedisACLs(stdout, acls, "-- ")
	return nil
}

// setupPlan is what setup prints or applies, part by part.
type setupPlan struct {
	header   string
	sections []setupSection
}

// setupSection is one part of the plan: the role, the replica identities or
// the publication.
type setupSection struct {
	title string   // what the part is for
	notes []string // why, printed as comments before the statements
	stmts []replication.Statement
}

func (p *setupPlan) count() int {
	n := 0
	for _, s := range p.sections {
		n += len(s.stmts)
	}
	return n
}

func (p *setupPlan) statements() []replication.Statement {
	var all []replication.Statement
	for _, s := range p.sections {
		all = append(all, s.stmts...)
	}
	return all
}

func (p *setupPlan) print(w io.Writer) {
	fmt.Fprintf(w, "-- %s\n", p.header)
	for _, s := range p.sections {
		fmt.Fprintln(w)
		if len(s.stmts) == 0 {
			fmt.Fprintf(w, "-- %s: nothing to do.\n", s.title)
			continue
		}
		fmt.Fprintf(w, "-- %s:\n", s.title)
		for _, n := range s.notes {
			fmt.Fprintf(w, "-- %s\n", n)
		}
		for _, st := range s.stmts {
			if st.Why != "" {
				fmt.Fprintf(w, "-- %s\n", st.Why)
			}
			fmt.Fprintf(w, "%s;\n", st.SQL)
		}
	}
	fmt.Fprintln(w)
}

// planSetup reads the live catalog in tx and works out the statements. It
// changes nothing that outlives tx's savepoints. What setup cannot fix is
// returned as a *daemon.ConfigError, the server's prerequisites first:
// a server that cannot stream (wal_level, no free slot or WAL sender, an
// unsupported version), and rule problems that REPLICA IDENTITY FULL
// would not fix.
func planSetup(ctx context.Context, tx pgx.Tx, cfg *config.File, role string) (*setupPlan, error) {
	names := cfg.Rules.Tables()
	srv, problems, err := replication.ServerProblems(ctx, tx.Conn(), cfg.Postgres.Slot)
	if err != nil {
		return nil, err
	}
	if srv.VersionNum < replication.MinServerVersion {
		return nil, &daemon.ConfigError{Problems: problems}
	}
	tables, err := replication.DescribeTables(ctx, tx.Conn(), names)
	if err != nil {
		return nil, fmt.Errorf("describe rule tables: %w", err)
	}
	var full, reasons []string
	for _, need := range cfg.Rules.FullIdentityNeeds(tables) {
		full = append(full, need.Table)
		reasons = append(reasons, need.Table+": "+need.Reason)
	}
	// What would still be wrong with those tables FULL is for the rules'
	// author to fix, not for setup.
	problems = append(problems, cfg.Rules.CheckSchema(replication.WithFullIdentity(tables, full))...)
	if len(problems) > 0 {
		return nil, &daemon.ConfigError{Problems: problems}
	}

	roleStmts, err := replication.RoleSQL(ctx, tx.Conn(), role, names)
	if err != nil {
		return nil, err
	}
	if len(cfg.Postgres.Replicas) > 0 {
		stmts, err := replication.StandbyRoleSQL(ctx, tx.Conn(), role)
		if err != nil {
			return nil, err
		}
		roleStmts = append(roleStmts, stmts...)
	}
	identStmts, err := replication.ReplicaIdentityFullSQL(ctx, tx.Conn(), full)
	if err != nil {
		return nil, err
	}
	pubStmts, err := replication.PublicationSQL(ctx, tx, cfg.Postgres.Publication, names)
	if err != nil {
		return nil, err
	}
	return &setupPlan{
		header: fmt.Sprintf("pg-invalidator setup for %s: publication %s, role %s, tables %s",
			cfg.Path, cfg.Postgres.Publication, role, strings.Join(names, ", ")),
		sections: []setupSection{
			{title: "Role " + role + ", which the daemon logs in as", stmts: roleStmts},
			{title: "Replica identity, so that updates and deletes send the old values the rules use", notes: reasons, stmts: identStmts},
			{title: "Publication " + cfg.Postgres.Publication + ", which the daemon streams from", stmts: pubStmts},
		},
	}, nil
}
