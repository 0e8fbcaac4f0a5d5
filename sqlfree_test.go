package pginvalidator

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// sqlStatement matches SQL as this code base writes it, in upper case: a
// SELECT followed by the start of a select list (a column, a function call,
// a number, *, EXISTS, ...), or an ALTER, CREATE or DROP of a database
// object. Prose that names a privilege or a keyword ("SELECT on the
// tables", "CREATE the slot") is not a statement.
var sqlStatement = regexp.MustCompile(`\bSELECT\s+(DISTINCT\b|EXISTS\b|NOT\b|\*|\d|\(|'|\$\d|` +
	`[a-z_][a-z0-9_.]*(\s*[(,=]|::|->|\s+AS\b|\s+FROM\b|\s*$))|` +
	`\b(ALTER|CREATE|DROP)\s+(OR\s+REPLACE\s+|UNIQUE\s+|TEMP\s+|TEMPORARY\s+|MATERIALIZED\s+)?` +
	`(TABLE|PUBLICATION|SUBSCRIPTION|ROLE|USER|SYSTEM|DATABASE|SCHEMA|INDEX|VIEW|FUNCTION|PROCEDURE|EXTENSION|TRIGGER|SEQUENCE|TYPE|DOMAIN|POLICY|RULE|SERVER)\b`)

func TestSQLStatementPattern(t *testing.T) {
	tests := []struct {
		text string
		want bool
	}{
		{"SELECT pg_logical_emit_message(false, 'pg_invalidator', 'heartbeat')", true},
		{"SELECT pubowner FROM pg_publication WHERE pubname = $1", true},
		{"\nSELECT s.slot_name\nFROM pg_replication_slots s", true},
		{"drop it with SELECT pg_drop_replication_slot('%s')", true},
		{"ALTER PUBLICATION %s DROP TABLE %s", true},
		{"CREATE PUBLICATION p FOR TABLE a", true},
		{"DROP TABLE items", true},
		{"ALTER SYSTEM SET wal_level = logical", true},
		{"CREATE UNIQUE INDEX i ON t (a)", true},
		{"USAGE on the rule tables' schemas and SELECT on the tables", false},
		{"REPLICA IDENTITY FULL for each table", false},
		{"creates its replication slot on first run", false},
		{"-- %d statement(s). Run them as a superuser", false},
		{"select a rule; drop the table from the file", false},
		{"SELECT current_user", true},
		{"SELECT 1", true},
		{"SELECT * FROM t", true},
		{"SELECT EXISTS (SELECT 1)", true},
		{"SELECT n.nspname, c.relname FROM", true},
		{"SELECT on the tables. A new role\n  - REPLICA IDENTITY FULL for each table whose rules use, on update or\n    delete, a column outside its replica identity (what check reports)", false},
	}
	for _, tt := range tests {
		if got := sqlStatement.MatchString(tt.text); got != tt.want {
			t.Errorf("sqlStatement matches %q = %v, want %v", tt.text, got, tt.want)
		}
	}
}

// TestNoSQLOutsideReplication keeps SQL in the package that owns
// PostgreSQL: the non-test Go files of daemon/ and cmd/ hold no SQL
// statement in any string literal. Comments and identifiers do not count.
// Move the statement into replication/, behind a function named for what it
// does.
func TestNoSQLOutsideReplication(t *testing.T) {
	fset := token.NewFileSet()
	files := 0
	for _, dir := range []string{"daemon", "cmd"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			files++
			ast.Inspect(f, func(n ast.Node) bool {
				lit, ok := n.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				s, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Errorf("%s: unquote %s: %v", fset.Position(lit.Pos()), lit.Value, err)
					return true
				}
				if m := sqlStatement.FindString(s); m != "" {
					t.Errorf("%s: SQL statement in a string literal (%q); move it into replication/", fset.Position(lit.Pos()), m)
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if files == 0 {
		t.Fatal("no Go files found under daemon/ and cmd/: the test is not looking where the code is")
	}
}
