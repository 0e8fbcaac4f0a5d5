package integration

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/daemon"
)

func TestUnrelatedTablesAndSchemaChanges(t *testing.T) {
	f := newFixture(t, productsSchema, markerSchema, "CREATE TABLE audit (id bigserial PRIMARY KEY, note text)")
	// A DBA's publication that holds more than the rules need.
	f.exec("CREATE PUBLICATION pg_invalidator FOR TABLE products, marker, audit")
	f.start(f.rules(`
[[rule]]
table = "products"
del = ["{p}product:<id>", "{p}named:<name>", "{p}body:<body>"]
` + markerRule))

	t.Run("changes to a table no rule names are ignored", func(t *testing.T) {
		f.exec("INSERT INTO audit (note) VALUES ('x')")
		f.sync()
	})
	t.Run("ADD COLUMN needs nothing", func(t *testing.T) {
		f.exec("ALTER TABLE products ADD COLUMN color text")
		f.cache("product:1", "named:lamp")
		f.exec("INSERT INTO products (id, name, body, color) VALUES (1, 'lamp', 'b', 'red')")
		f.waitGone("product:1", "named:lamp", "body:b")
	})
	t.Run("a dropped template column stops only that template", func(t *testing.T) {
		f.exec("ALTER TABLE products DROP COLUMN body")
		f.cache("product:2", "named:desk")
		f.exec("INSERT INTO products (id, name) VALUES (2, 'desk')")
		f.waitGone("product:2", "named:desk")
	})
	t.Run("a renamed template column stops only that template", func(t *testing.T) {
		f.exec("ALTER TABLE products RENAME COLUMN name TO title")
		f.cache("product:3")
		f.exec("INSERT INTO products (id, title) VALUES (3, 'chair')")
		f.waitGone("product:3")
	})
	t.Run("a dropped table does not stop the daemon", func(t *testing.T) {
		f.exec("DROP TABLE audit")
		f.sync()
	})
}

func TestRunRefusesMissingReplicaIdentity(t *testing.T) {
	f := newFixture(t, `CREATE TABLE products (id bigint PRIMARY KEY, category_id bigint)`)
	cfg := f.config(f.rules(`
[[rule]]
table = "products"
del = ["{p}list:cat:<category_id>"]
`))
	err := daemon.Run(context.Background(), cfg)
	var cfgErr *daemon.ConfigError
	if !errors.As(err, &cfgErr) {
		t.Fatalf("Run = %v, want a *daemon.ConfigError", err)
	}
	for _, want := range []string{"public.products", "category_id", "ALTER TABLE public.products REPLICA IDENTITY FULL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	// Nothing was created: a refused start leaves the database as it was.
	var slots int
	f.db.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pg_invalidator'").Scan(&slots)
	if slots != 0 {
		t.Error("a refused start created the replication slot")
	}
}

func TestCheckReportsEveryProblem(t *testing.T) {
	f := newFixture(t, `
		CREATE TABLE products (id bigint PRIMARY KEY, category_id bigint);
		CREATE TABLE nokey (id bigint, name text);
		CREATE TABLE nothing (id bigint PRIMARY KEY);
		ALTER TABLE nothing REPLICA IDENTITY NOTHING;`)
	rules := f.rules(`
[[rule]]
table = "products"
del = ["{p}list:cat:<category_id>", "{p}p:<missing_col>"]

[[rule]]
table = "nokey"
del = ["{p}nokey:<id>"]

[[rule]]
table = "nothing"
del = ["{p}nothing:<id>"]

[[rule]]
table = "ghost"
del = ["{p}ghost:<id>"]
`)
	for _, cmd := range []string{"check", "run"} {
		out, err := exec.Command(daemonBinary(t), cmd, "--config", rules, "--postgres", f.dbURL, "--redis", f.redisURL).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("%s exited %v, want non-zero; output:\n%s", cmd, err, out)
		}
		for _, want := range []string{
			"rules.toml:2:", "ALTER TABLE public.products REPLICA IDENTITY FULL", "missing_col",
			"rules.toml:6:", "public.nokey",
			"rules.toml:10:", "public.nothing",
			"rules.toml:14:", "public.ghost",
		} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s output does not mention %q:\n%s", cmd, want, out)
			}
		}
	}
}

func TestCheckPassesOnAGoodSchema(t *testing.T) {
	f := newFixture(t, productsSchema)
	out, err := exec.Command(daemonBinary(t), "check", "--config", f.rules(productsRules[:strings.Index(productsRules, "[[rule]]\ntable = \"marker\"")]),
		"--postgres", f.dbURL).CombinedOutput()
	if err != nil {
		t.Fatalf("check failed on a good schema: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "ok") {
		t.Fatalf("check printed no verdict:\n%s", out)
	}
}

// TestBadConfigFilesThroughTheBinary runs check and run on the bad rules
// files of config/testdata: each fails before it connects anywhere, prints
// every problem with file and line, and exits non-zero.
func TestBadConfigFilesThroughTheBinary(t *testing.T) {
	tests := []struct {
		file string
		want []string
	}{
		{"syntax.toml", []string{`syntax.toml:9: TOML syntax error after key "rule.del"`}},
		{"several.toml", []string{
			`several.toml:4: unknown key "slto" in [postgres]`,
			`several.toml:13: template "product-list:<category_id": the "<" at byte 14 has no closing ">"`,
			`several.toml:16: on: "INSERT" is not an operation`,
			`several.toml:18: rule has no del, incr or version`,
			`several.toml:19: table "a.b.c" has more than one dot`,
			`several.toml:24: unknown key "colour" in [[rule]]`,
		}},
	}
	for _, tt := range tests {
		for _, cmd := range []string{"check", "run"} {
			t.Run(cmd+" "+tt.file, func(t *testing.T) {
				out, err := exec.Command(daemonBinary(t), cmd, "--config", "../config/testdata/"+tt.file,
					"--postgres", "postgres://nobody@127.0.0.1:1/none", "--redis", "redis://127.0.0.1:1/0").CombinedOutput()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 {
					t.Fatalf("exit = %v, want status 1; output:\n%s", err, out)
				}
				for _, want := range tt.want {
					if !strings.Contains(string(out), want) {
						t.Errorf("output lacks %q:\n%s", want, out)
					}
				}
			})
		}
	}
}
