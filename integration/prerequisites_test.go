package integration

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// Each test here runs the binary against a real server configured to lack
// one prerequisite, and checks that check, setup and run (and run
// --dry-run) refuse before they create anything, printing the problem with
// its fix.

// startPostgres starts a private PostgreSQL with extra settings, which
// override localsvc's (wal_level=logical, 64 slots and WAL senders), and
// stops it when the test ends.
func startPostgres(t *testing.T, settings ...string) *localsvc.Postgres {
	t.Helper()
	pg, err := localsvc.StartPostgres(context.Background(), localsvc.PostgresOptions{Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	return pg
}

// refuses runs the binary with args and checks that it exits 1 at once,
// printing "N problem(s) found:" and then each of the lines in want. A
// binary that retries instead is killed after a while and fails the test.
func refuses(t *testing.T, want []string, args ...string) (stdout string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, daemonBinary(t), args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	stdout, stderr, code := out.String(), errOut.String(), 0
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s did not exit within 30s: it retries what retrying cannot fix\nstderr:\n%s", args[0], stderr)
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	if code != 1 {
		t.Errorf("%s: exit %d, want 1\nstdout:\n%s\nstderr:\n%s", args[0], code, stdout, stderr)
	}
	if !strings.Contains(stderr, "problem(s) found:") {
		t.Errorf("%s: stderr lacks \"problem(s) found:\":\n%s", args[0], stderr)
	}
	for _, line := range want {
		if !hasLine(stderr, line) {
			t.Errorf("%s: stderr lacks the line\n%s\nin:\n%s", args[0], line, stderr)
		}
	}
	return stdout
}

// createdNothing checks that the database has no publication and no slot.
func (f *fixture) createdNothing(after string) {
	f.t.Helper()
	var pubs, slots int
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_publication").Scan(&pubs)
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()").Scan(&slots)
	if pubs != 0 || slots != 0 {
		f.t.Errorf("after %s: %d publication(s) and %d slot(s), want none: a refused start must leave nothing behind", after, pubs, slots)
	}
}

// TestPrerequisiteWALLevel runs against a stock server, wal_level = replica.
func TestPrerequisiteWALLevel(t *testing.T) {
	pg := startPostgres(t, "wal_level=replica")
	walLevel := "wal_level is replica, but logical decoding needs logical; fix: as a superuser, run ALTER SYSTEM SET wal_level = logical; " +
		"then restart PostgreSQL (a reload is not enough). A managed service takes its own parameter instead, then a reboot: " +
		"rds.logical_replication = 1 on Amazon RDS and Aurora, cloudsql.logical_decoding = on on Google Cloud SQL, " +
		"wal_level = logical as a server parameter on Azure flexible server (azure.replication_support = logical on the retired single server)"
	want := []string{"pg-invalidator: 1 problem(s) found:", walLevel}

	t.Run("check", func(t *testing.T) {
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
		if out := refuses(t, want, "check", "--config", f.rules(itemsRules), "--postgres", f.dbURL); strings.Contains(out, "ok") {
			t.Errorf("check printed ok:\n%s", out)
		}
	})
	t.Run("setup", func(t *testing.T) {
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
		if out := refuses(t, want, "setup", "--config", f.rules(itemsRules), "--postgres", f.dbURL, "--apply"); out != "" {
			t.Errorf("setup printed a plan though the server cannot stream:\n%s", out)
		}
		f.createdNothing("setup --apply")
	})
	t.Run("run", func(t *testing.T) {
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
		refuses(t, want, "run", "--config", f.rules(itemsRules), "--postgres", f.dbURL, "--redis", f.redisURL)
		f.createdNothing("run")
	})
	t.Run("dry run", func(t *testing.T) {
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
		f.exec(replication.CreatePublicationSQL("pg_invalidator", []string{"items", "marker"}))
		refuses(t, want, "run", "--dry-run", "--config", f.rules(itemsRules), "--postgres", f.dbURL)
	})

	// On Amazon RDS the fix is a parameter group, and the right to
	// replicate comes with membership in rds_replication: the server's own
	// settings and roles give the service away. Here a database setting and
	// a role play the part.
	t.Run("on Amazon RDS", func(t *testing.T) {
		testExec(t, pg.URL(), "CREATE ROLE rds_replication NOLOGIN")
		t.Cleanup(func() { testExec(t, pg.URL(), "DROP ROLE rds_replication") })
		role := testenv.UniqueName()
		testExec(t, pg.URL(), "CREATE ROLE "+role+" LOGIN PASSWORD 'pw'")
		t.Cleanup(func() { testExec(t, pg.URL(), "DROP ROLE "+role) })
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema, "GRANT SELECT ON items, marker TO "+role)
		f.exec("ALTER DATABASE " + dbName(t, f.dbURL) + " SET rds.logical_replication = '0'")
		rules := f.rules(itemsRules)
		rdsWALLevel := "wal_level is replica, but logical decoding needs logical; fix: this is Amazon RDS or Aurora: " +
			"set rds.logical_replication = 1 in the DB parameter group (on Aurora, the DB cluster parameter group), then reboot"
		roleURL := asRole(t, f.dbURL, role, "pw")
		refuses(t, []string{"pg-invalidator: 2 problem(s) found:", rdsWALLevel,
			"role " + role + " is not a member of rds_replication, so it may not stream changes (Amazon RDS and Aurora grant the right through that role); " +
				`fix: as the master user, run GRANT rds_replication TO "` + role + `";`,
		}, "check", "--config", rules, "--postgres", roleURL)
		f.exec("GRANT rds_replication TO " + role)
		refuses(t, []string{"pg-invalidator: 1 problem(s) found:", rdsWALLevel}, "check", "--config", rules, "--postgres", roleURL)
	})
}

// dbName returns the database a URL names.
func dbName(t *testing.T, dbURL string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

// TestPrerequisiteFreeSlotAndWALSender runs against a server with one
// replication slot and one WAL sender, which another consumer, or the
// daemon itself, takes; and then plays Amazon RDS on it.
func TestPrerequisiteFreeSlotAndWALSender(t *testing.T) {
	pg := startPostgres(t, "max_replication_slots=1", "max_wal_senders=1")

	t.Run("slots used up", func(t *testing.T) {
		testExec(t, pg.URL(), "SELECT pg_create_physical_replication_slot('someone_elses')")
		t.Cleanup(func() { testExec(t, pg.URL(), "SELECT pg_drop_replication_slot('someone_elses')") })
		want := []string{"pg-invalidator: 1 problem(s) found:",
			"no free replication slot: max_replication_slots is 1 and 1 slot is in use (someone_elses); " +
				"fix: drop a slot nobody uses with SELECT pg_drop_replication_slot('name'), or raise the limit with " +
				"ALTER SYSTEM SET max_replication_slots = 2; then restart PostgreSQL (a reload is not enough)"}
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
		rules := f.rules(itemsRules)
		refuses(t, want, "check", "--config", rules, "--postgres", f.dbURL)
		refuses(t, want, "setup", "--config", rules, "--postgres", f.dbURL, "--apply")
		refuses(t, want, "run", "--config", rules, "--postgres", f.dbURL, "--redis", f.redisURL)
		f.createdNothing("setup --apply and run")
	})

	t.Run("WAL senders used up", func(t *testing.T) {
		dsn, err := replication.ReplicationURL(pg.URL())
		if err != nil {
			t.Fatal(err)
		}
		held, err := pgconn.Connect(context.Background(), dsn) // a walsender, like a standby's
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { held.Close(context.Background()) })
		want := []string{"pg-invalidator: 1 problem(s) found:",
			"no free WAL sender: max_wal_senders is 1 and 1 is in use by other replication connections (standbys, subscribers, other consumers); " +
				"fix: raise the limit with ALTER SYSTEM SET max_wal_senders = 2; then restart PostgreSQL (a reload is not enough); " +
				"or end a replication connection nobody needs (pg_stat_replication lists them)"}
		// The daemon's role, as setup makes it: no superuser, which sees
		// other roles' walsenders only in part.
		role := testenv.UniqueName()
		testExec(t, pg.URL(), "CREATE ROLE "+role+" LOGIN REPLICATION PASSWORD 'pw'")
		t.Cleanup(func() { testExec(t, pg.URL(), "DROP ROLE "+role) })
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema, "GRANT SELECT ON items, marker TO "+role)
		rules := f.rules(itemsRules)
		roleURL := asRole(t, f.dbURL, role, "pw")
		refuses(t, want, "check", "--config", rules, "--postgres", roleURL)
		refuses(t, want, "run", "--config", rules, "--postgres", roleURL, "--redis", f.redisURL)
		f.createdNothing("run")
	})

	// The daemon's own slot and walsender count as free: once it streams,
	// taking both, check still passes; a dry run, which needs a slot and a
	// WAL sender of its own, does not.
	t.Run("the daemon's own slot", func(t *testing.T) {
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
		rules := f.rules(itemsRules)
		f.startProcess(rules)
		f.waitSlotActive("pg_invalidator", nil)
		stdout, stderr, code := runCLI(t, "check", "--config", rules, "--postgres", f.dbURL)
		if code != 0 || !strings.Contains(stdout, "1 of 1 replication slots in use, 0 of 1 WAL senders in use") {
			t.Errorf("check beside the running daemon: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		refuses(t, []string{"pg-invalidator: 2 problem(s) found:",
			"no free replication slot: max_replication_slots is 1 and 1 slot is in use (pg_invalidator); " +
				"fix: drop a slot nobody uses with SELECT pg_drop_replication_slot('name'), or raise the limit with " +
				"ALTER SYSTEM SET max_replication_slots = 2; then restart PostgreSQL (a reload is not enough)",
			"no free WAL sender: max_wal_senders is 1 and 1 is in use by other replication connections (standbys, subscribers, other consumers); " +
				"fix: raise the limit with ALTER SYSTEM SET max_wal_senders = 2; then restart PostgreSQL (a reload is not enough); " +
				"or end a replication connection nobody needs (pg_stat_replication lists them)",
		}, "run", "--dry-run", "--config", rules, "--postgres", f.dbURL)
	})

	// Where the server has an rds_replication role, as Amazon RDS and Aurora
	// do, no role may be given the REPLICATION attribute: setup grants
	// rds_replication instead, and check accepts it. (This server is
	// borrowed, being private: the role must not reach other tests.)
	t.Run("setup on Amazon RDS", func(t *testing.T) {
		testExec(t, pg.URL(), "CREATE ROLE rds_replication NOLOGIN")
		role := testenv.UniqueName()
		t.Cleanup(func() { testExec(t, pg.URL(), "DROP ROLE IF EXISTS "+role+", rds_replication") })
		f := newFixtureOn(t, pg.URL(), env.RedisURL, itemsSchema, markerSchema)
		rules := f.rules(itemsRules)
		stdout, stderr, code := runCLI(t, "setup", "--config", rules, "--postgres", f.dbURL, "--role", role, "--apply")
		if code != 0 {
			t.Fatalf("setup --apply: exit %d\nstderr:\n%s", code, stderr)
		}
		for _, want := range []string{
			`CREATE ROLE "` + role + `" WITH LOGIN PASSWORD NULL;`,
			"-- Amazon RDS and Aurora grant the right to replicate through this role",
			`GRANT rds_replication TO "` + role + `";`,
			`GRANT SELECT ON TABLE "public"."items", "public"."marker" TO "` + role + `";`,
		} {
			if !hasLine(stdout, want) {
				t.Errorf("setup output lacks the line\n%s\nin:\n%s", want, stdout)
			}
		}
		f.exec("ALTER ROLE " + role + " PASSWORD 'pw'")
		if stdout, stderr, code := runCLI(t, "check", "--config", rules, "--postgres", asRole(t, f.dbURL, role, "pw")); code != 0 {
			t.Errorf("check as a member of rds_replication: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
	})
}

// TestPrerequisiteRole runs as a role that may log in and read one rule
// table, but may not replicate nor read the other table.
func TestPrerequisiteRole(t *testing.T) {
	t.Parallel()
	role := newClusterRole(t)
	f := newFixture(t, itemsSchema, markerSchema,
		"CREATE ROLE "+role+" LOGIN PASSWORD 'pw'",
		"GRANT SELECT ON items TO "+role)
	// The DBA made the publication, so the role gets as far as it can.
	f.exec(replication.CreatePublicationSQL("pg_invalidator", []string{"items", "marker"}))
	rules := f.rules(itemsRules)
	roleURL := asRole(t, f.dbURL, role, "pw")
	want := []string{
		"pg-invalidator: 2 problem(s) found:",
		"role " + role + " has neither the REPLICATION attribute nor superuser, so it may not stream changes; " +
			`fix: as a superuser, run ALTER ROLE "` + role + `" WITH LOGIN REPLICATION; (pg-invalidator setup prints every statement the role needs)`,
		"role " + role + " may not read rule table public.marker (it lacks SELECT); " +
			`fix: as the tables' owner or a superuser, run GRANT SELECT ON TABLE "public"."marker" TO "` + role + `";`,
	}
	refuses(t, want, "check", "--config", rules, "--postgres", roleURL)
	refuses(t, want, "run", "--config", rules, "--postgres", roleURL, "--redis", f.redisURL)
	refuses(t, want, "run", "--dry-run", "--config", rules, "--postgres", roleURL)
	var slots int
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()").Scan(&slots)
	if slots != 0 {
		t.Errorf("%d slot(s) created by a role that may not replicate", slots)
	}
}

// testExec runs one statement on url.
func testExec(t *testing.T, url, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
