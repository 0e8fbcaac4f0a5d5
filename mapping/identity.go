package mapping

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// OldColumns returns the columns whose old values r needs: those its
// templates name, when it handles update or delete, the operations whose old
// row depends on the table's replica identity; nil otherwise. Each must be
// in the replica identity.
func (r *Rule) OldColumns() []string {
	if r.On&oldOps == 0 {
		return nil
	}
	return ruleColumns(r)
}

// unusableIdentity says what is wrong with info's replica identity when,
// once the table is published, it makes the application's own UPDATE and
// DELETE on it fail with SQLSTATE 55000: NOTHING, or DEFAULT without a
// primary key. It returns "" when the identity is usable.
func unusableIdentity(info pginvalidator.TableInfo) string {
	switch {
	case info.ReplicaIdentity == pginvalidator.IdentityNothing:
		return "REPLICA IDENTITY NOTHING"
	case info.ReplicaIdentity == pginvalidator.IdentityDefault && !info.HasPrimaryKey:
		return "REPLICA IDENTITY DEFAULT but no primary key"
	}
	return ""
}

// IdentityNeed is a rule table whose replica identity must become FULL, and
// why.
type IdentityNeed struct {
	Table  string // "schema.table", as Rules.Tables names it
	Reason string // one line, without the table's name
}

// FullIdentityNeeds returns the rule tables that need REPLICA IDENTITY
// FULL, sorted by name, each with the reason: the identity problems
// CheckSchema reports. Either the identity is unusable (NOTHING, or
// DEFAULT without a primary key), or a rule that handles update or delete
// uses a column outside it. tables is what the catalog says, keyed by
// "schema.table"; a table that does not exist or is FULL already is left
// out.
func (rs *Rules) FullIdentityNeeds(tables map[string]pginvalidator.TableInfo) []IdentityNeed {
	var out []IdentityNeed
	for _, name := range slices.Sorted(maps.Keys(tables)) {
		info := tables[name]
		if !info.Exists || info.ReplicaIdentity == pginvalidator.IdentityFull {
			continue
		}
		var reason string
		switch {
		case unusableIdentity(info) == "":
			var cols []string
			for _, r := range rs.List {
				if r.QualifiedName() != name {
					continue
				}
				for _, col := range r.OldColumns() {
					if slices.Contains(info.Columns, col) && !slices.Contains(info.Generated, col) &&
						!slices.Contains(info.IdentityColumns, col) && !slices.Contains(cols, col) {
						cols = append(cols, col)
					}
				}
			}
			if len(cols) == 0 {
				continue
			}
			reason = fmt.Sprintf("rules use %s on update or delete, outside REPLICA IDENTITY %s", strings.Join(cols, ", "), identityName(info.ReplicaIdentity))
		case info.ReplicaIdentity == pginvalidator.IdentityNothing:
			reason = "has REPLICA IDENTITY NOTHING, so once published its UPDATE and DELETE would fail (SQLSTATE 55000)"
		default:
			reason = "has no primary key for REPLICA IDENTITY DEFAULT, so once published its UPDATE and DELETE would fail (SQLSTATE 55000)"
		}
		out = append(out, IdentityNeed{Table: name, Reason: reason})
	}
	return out
}
