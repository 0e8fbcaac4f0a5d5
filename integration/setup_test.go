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

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// defaultItemsSchema is itemsSchema under REPLICA IDENTITY DEFAULT, which
// itemsRules' <cat> on update and delete cannot live with.
const defaultItemsSchema = `
CREATE TABLE items (id bigint PRIMARY KEY, cat int, v int NOT NULL DEFAULT 0);
INSERT INTO items (id, cat) SELECT g, g % 10 FROM generate_series(1, 20) g;
`

// runCLI runs the daemon binary with args and returns its stdout, stderr
// and exit code.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(daemonBinary(t), args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// newClusterRole returns a unique role name and drops the role when the
// test ends. Roles are cluster-wide: call it before newFixture, so that the
// role is dropped after the test's database, which holds its privileges.
func newClusterRole(t *testing.T) string {
	t.Helper()
	role := testenv.UniqueName()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, env.PostgresURL)
		if err != nil {
			t.Errorf("drop role %s: %v", role, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+role); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
	return role
}

// asRole returns dbURL logging in as role with password.
func asRole(t *testing.T, dbURL, role, password string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, password)
	return u.String()
}

func TestSetupPrintsAppliesAndRunsAsRole(t *testing.T) {
	t.Parallel()
	role := newClusterRole(t)
	f := newFixture(t, defaultItemsSchema, markerSchema)
	rules := f.rules(itemsRules)

	// Before setup, check reports the identity problem.
	if _, stderr, code := runCLI(t, "check", "--config", rules, "--postgres", f.dbURL); code != 1 ||
		!strings.Contains(stderr, `ALTER TABLE public.items REPLICA IDENTITY FULL;`) {
		t.Fatalf("check before setup: exit %d, stderr:\n%s", code, stderr)
	}

	// 1. Printing changes nothing.
	setup := []string{"setup", "--config", rules, "--postgres", f.dbURL, "--role", role}
	stdout, stderr, code := runCLI(t, setup...)
	if code != 0 {
		t.Fatalf("setup: exit %d, stderr:\n%s", code, stderr)
	}
	wantLines := []string{
		`CREATE ROLE "` + role + `" WITH LOGIN REPLICATION PASSWORD NULL;`,
		`GRANT USAGE ON SCHEMA "public" TO "` + role + `";`,
		`GRANT SELECT ON TABLE "public"."items", "public"."marker" TO "` + role + `";`,
		`-- public.items: rules use cat on update or delete, outside REPLICA IDENTITY DEFAULT`,
		`ALTER TABLE "public"."items" REPLICA IDENTITY FULL;`,
		`CREATE PUBLICATION "pg_invalidator" FOR TABLE "public"."items", "public"."marker" WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);`,
		`-- 5 statement(s). Run them as a superuser, or run pg-invalidator setup --apply to run them in one transaction.`,
	}
	for _, want := range wantLines {
		if !hasLine(stdout, want) {
			t.Errorf("setup output lacks the line\n%s\nin:\n%s", want, stdout)
		}
	}
	var roles, pubs int
	var ident string
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", role).Scan(&roles)
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_publication").Scan(&pubs)
	f.db.QueryRow(context.Background(), "SELECT relreplident::text FROM pg_class WHERE relname = 'items'").Scan(&ident)
	if roles != 0 || pubs != 0 || ident != "d" {
		t.Fatalf("printing changed the database: %d role(s), %d publication(s), items identity %q", roles, pubs, ident)
	}

	// 2. --apply runs the same statements.
	stdout, stderr, code = runCLI(t, append(setup, "--apply")...)
	if code != 0 {
		t.Fatalf("setup --apply: exit %d, stderr:\n%s", code, stderr)
	}
	for _, want := range append(wantLines[:len(wantLines)-1], "-- Applied 5 statement(s) in one transaction.") {
		if !hasLine(stdout, want) {
			t.Errorf("setup --apply output lacks the line\n%s\nin:\n%s", want, stdout)
		}
	}

	// 3. A second run has nothing to do.
	stdout, stderr, code = runCLI(t, append(setup, "--apply")...)
	if code != 0 {
		t.Fatalf("second setup --apply: exit %d, stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		"-- Role " + role + ", which the daemon logs in as: nothing to do.",
		"-- Replica identity, so that updates and deletes send the old values the rules use: nothing to do.",
		"-- Publication pg_invalidator, which the daemon streams from: nothing to do.",
		"-- Nothing to do.",
	} {
		if !hasLine(stdout, want) {
			t.Errorf("second setup output lacks the line\n%s\nin:\n%s", want, stdout)
		}
	}

	// 4. check and run pass as the new role, which is no superuser and
	// owns nothing: the publication is a DBA's.
	f.exec("ALTER ROLE " + role + " PASSWORD 'pw'") // for servers that do not trust local logins
	roleURL := asRole(t, f.dbURL, role, "pw")
	if stdout, stderr, code := runCLI(t, "check", "--config", rules, "--postgres", roleURL); code != 0 {
		t.Fatalf("check as %s: exit %d\nstdout:\n%s\nstderr:\n%s", role, code, stdout, stderr)
	}
	f.cache("item:3", "items:cat:3", "items:cat:7")
	f.startProcessURL(roleURL, rules)
	f.waitSlotActive("pg_invalidator", nil)
	f.exec("UPDATE items SET cat = 7 WHERE id = 3") // cat 3 -> 7: the old value needs FULL
	f.waitGone("item:3", "items:cat:3", "items:cat:7")

	var owner string
	f.db.QueryRow(context.Background(), "SELECT pg_get_userbyid(pubowner) FROM pg_publication WHERE pubname = 'pg_invalidator'").Scan(&owner)
	if owner == role {
		t.Errorf("publication is owned by %s, want the DBA's role", role)
	}
}

// TestSetupAddsMissingTables: a publication a DBA made for some of the
// tables gets the others added, and a rule table that does not exist
// stops setup before it does anything.
func TestSetupAddsMissingTables(t *testing.T) {
	t.Parallel()
	role := newClusterRole(t)
	f := newFixture(t, itemsSchema, markerSchema, "CREATE PUBLICATION pg_invalidator FOR TABLE marker")
	rules := f.rules(itemsRules)

	stdout, stderr, code := runCLI(t, "setup", "--config", rules, "--postgres", f.dbURL, "--role", role, "--apply")
	if code != 0 {
		t.Fatalf("setup --apply: exit %d, stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		"-- Replica identity, so that updates and deletes send the old values the rules use: nothing to do.",
		"-- publication pg_invalidator lacks tables public.items",
		`ALTER PUBLICATION "pg_invalidator" ADD TABLE "public"."items";`,
		"-- Applied 4 statement(s) in one transaction.",
	} {
		if !hasLine(stdout, want) {
			t.Errorf("setup output lacks the line\n%s\nin:\n%s", want, stdout)
		}
	}
	var n int
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pg_invalidator'").Scan(&n)
	if n != 2 {
		t.Errorf("publication has %d tables, want 2", n)
	}

	missing := f.rules(itemsRules + `
[[rule]]
table = "nosuch"
del = ["{p}x"]
`)
	_, stderr, code = runCLI(t, "setup", "--config", missing, "--postgres", f.dbURL, "--role", role, "--apply")
	if code != 1 || !strings.Contains(stderr, "table public.nosuch does not exist") {
		t.Errorf("setup with a missing table: exit %d, stderr:\n%s", code, stderr)
	}
}

func hasLine(text, line string) bool {
	for l := range strings.SplitSeq(text, "\n") {
		if l == line {
			return true
		}
	}
	return false
}
