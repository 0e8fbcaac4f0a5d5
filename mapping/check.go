package mapping

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// CheckSchema checks every rule against the live catalog and returns every
// problem, each a *Problem at the rule's line, or nil. tables is keyed by
// "schema.table"; a missing key means the table does not exist.
//
// A table without a usable replica identity is refused whatever its rules'
// on says, because the publication publishes every kind of change for every
// rule table.
func (rs *Rules) CheckSchema(tables map[string]pginvalidator.TableInfo) []error {
	var errs []error
	for _, r := range rs.List {
		problem := func(format string, args ...any) {
			errs = append(errs, &Problem{File: rs.File, Line: r.Line, Msg: fmt.Sprintf(format, args...)})
		}
		name := r.QualifiedName()
		info, ok := tables[name]
		if !ok || !info.Exists {
			problem(`table %s does not exist, or the connecting role cannot see it; check the schema and table name (write "schema.table" when it is not in public; names are matched as PostgreSQL stores them, usually lowercase)`, name)
			continue
		}
		what := unusableIdentity(info)
		identityOK := what == ""
		if !identityOK {
			problem("table %s has %s: once the publication publishes its updates and deletes, the application's own UPDATE and DELETE on it fail with SQLSTATE 55000; fix: add a primary key, or %s",
				name, what, identityFix(info))
		}
		if r.On&rowOps == 0 {
			continue // truncate only: no column values are needed
		}
		for _, col := range ruleColumns(r) {
			switch {
			case !slices.Contains(info.Columns, col):
				problem("table %s has no column %q; its columns are: %s", name, col, strings.Join(info.Columns, ", "))
			case slices.Contains(info.Generated, col):
				problem("table %s: column %q is generated, and pgoutput never sends the values of generated columns; use the columns it is computed from", name, col)
			case identityOK && r.On&oldOps != 0 && !slices.Contains(info.IdentityColumns, col):
				problem("table %s: rule uses column %s on %s, but its old value is not sent under REPLICA IDENTITY %s; fix: %s",
					name, col, strings.ReplaceAll((r.On&oldOps).String(), ", ", "/"), identityName(info.ReplicaIdentity), identityFix(info))
			}
		}
	}
	return errs
}

// oldOps holds the operations whose old row depends on the replica identity.
const oldOps = Ops(1<<pginvalidator.OpUpdate | 1<<pginvalidator.OpDelete)

// ruleColumns returns the columns a rule's templates name, each once.
func ruleColumns(r *Rule) []string {
	var cols []string
	for _, t := range r.Templates() {
		for _, c := range t.Columns() {
			if !slices.Contains(cols, c) {
				cols = append(cols, c)
			}
		}
	}
	return cols
}

func identityName(id byte) string {
	switch id {
	case pginvalidator.IdentityDefault:
		return "DEFAULT"
	case pginvalidator.IdentityFull:
		return "FULL"
	case pginvalidator.IdentityIndex:
		return "USING INDEX"
	case pginvalidator.IdentityNothing:
		return "NOTHING"
	}
	return fmt.Sprintf("%q", id)
}

// IdentityFix returns what to run so that every old value of table t is
// sent: ALTER TABLE ... REPLICA IDENTITY FULL, on each leaf partition of a
// partitioned table.
func IdentityFix(t pginvalidator.TableInfo) string { return identityFix(t) }

// identityFix returns the SQL that makes every old value available.
func identityFix(t pginvalidator.TableInfo) string {
	name := quoteIdent(t.Schema) + "." + quoteIdent(t.Name)
	if t.Partitioned {
		return "run ALTER TABLE <partition> REPLICA IDENTITY FULL; on each leaf partition of " + name +
			" (PostgreSQL does not pass a partitioned table's replica identity down to its partitions)"
	}
	return "ALTER TABLE " + name + " REPLICA IDENTITY FULL;"
}

// plainIdent is an identifier that needs no quotes unless it is a keyword.
var plainIdent = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)

// quoteIdent quotes a name for SQL when it needs it.
func quoteIdent(s string) string {
	if plainIdent.MatchString(s) && !slices.Contains(reservedWords, s) {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// reservedWords are the PostgreSQL keywords that cannot name a table unquoted
// (reserved, and reserved but allowed as function or type names).
var reservedWords = strings.Fields(`
	all analyse analyze and any array as asc asymmetric authorization binary both case cast check
	collate collation column concurrently constraint create cross current_catalog current_date
	current_role current_schema current_time current_timestamp current_user default deferrable desc
	distinct do else end except false fetch for foreign freeze from full grant group having ilike in
	initially inner intersect into is isnull join lateral leading left like limit localtime
	localtimestamp natural not notnull null offset on only or order outer overlaps placing primary
	references returning right select session_user similar some symmetric system_user table
	tablesample then to trailing true union unique user using variadic verbose when where window with`)
