// Package mapping reads rules.toml and turns row changes into Redis commands.
//
// A rule names a table and the key templates to delete (del), increment
// (incr) or set to the transaction's LSN (version) when one of its rows
// changes:
//
//	[[rule]]
//	table   = "products"          # "schema.table"; the schema defaults to public
//	del     = ["product:<id>", "product-list:category:<category_id>"]
//	incr    = ["cache:counter:products"]
//	version = ["cache:version:products"]
//	on      = ["insert", "update", "delete", "truncate"]   # optional; default all four
//	redelete_after = "500ms"      # optional; off by default
//
// # Templates
//
// In a template, <column> stands for the column's PostgreSQL text output,
// byte for byte; the column name is matched exactly as PostgreSQL stores it
// (usually lowercase). Write << for a literal "<" and >> for a literal ">".
// Anything else is literal text. A column name cannot contain "<" or ">",
// nor begin or end with a space. These are errors: an empty template, an
// empty placeholder "<>", a "<" with no ">" before the next "<" or the end,
// and a ">" that closes no placeholder.
//
// # What a change becomes
//
// An insert renders every template against the new row, a delete against the
// old row, and an update against both, so that moving a product from
// category 3 to 5 invalidates both lists. A template whose column is NULL, or
// whose value the stream did not send (an unchanged TOASTed value, or an old
// value outside the replica identity), renders no key for that row; Mapper
// counts it in Stats. A truncate turns templates with placeholders into glob
// patterns (DelPattern, IncrPattern, VersionPattern). Commands for one change
// are deduplicated; commands across changes are not.
//
// # Delayed re-delete
//
// With redelete_after, every key the rule deletes (and every pattern a
// truncate turns its del templates into) is deleted again that long after
// the first time: Command.Redelete carries the delay. A reader that read
// the row before the change and cached it after the first delete has its
// stale value removed then. The delay should be longer than the
// application's slowest read-to-SET.
//
// A template text may appear under one action only, across all rules: a key
// that is both deleted and incremented, or both incremented and set to an
// LSN, would defeat the versioning its readers rely on.
//
// # Guarantees
//
// Parse reports every problem it finds, each as "file:line: message", and
// says how to fix it when it can. CheckSchema does the same for the rules
// against the live catalog, including replica identity settings that would
// hide old values or make the application's own UPDATE and DELETE fail.
// Nothing here does I/O, reads the environment or knows about connections:
// the config package reads rules.toml as a file, its connection tables
// included, and hands the [[rule]] tables to ParseDoc.
package mapping

import (
	"slices"
	"strconv"
	"strings"
	"time"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/tomldoc"
)

// Problem is one thing wrong with a rules file, at a line of it.
type Problem = tomldoc.Problem

// Errors is every problem found in one pass, in line order. Parse returns
// it as its error; errors.As finds it, and each element is a *Problem.
type Errors = tomldoc.Errors

// Rules is the rule set of one rules file: its [[rule]] tables.
type Rules struct {
	File string  // the path the rules were read from, used in messages
	List []*Rule // in file order; never empty after Parse
}

// Rule is one [[rule]]: which table, which keys, on which operations.
type Rule struct {
	Line    int         // line of the rule's [[rule]] header
	Schema  string      // never empty after Parse; "public" when the file gives none
	Table   string      // as PostgreSQL stores it
	Del     []*Template // keys to delete
	Incr    []*Template // keys to increment
	Version []*Template // keys to set to the transaction's LSN
	On      Ops         // operations the rule handles; AllOps when the file says none
	// RedeleteAfter is how long after a Del key (or a truncate's
	// DelPattern) was first deleted it is deleted again; zero: never.
	RedeleteAfter time.Duration
	// Del, Incr and Version are never all empty after Parse.
}

// Templates returns the rule's templates: its del, then incr, then version
// templates.
func (r *Rule) Templates() []*Template { return slices.Concat(r.Del, r.Incr, r.Version) }

// QualifiedName returns "schema.table".
func (r *Rule) QualifiedName() string { return r.Schema + "." + r.Table }

// Ops is a set of operations, one bit per pginvalidator.Op. The zero value
// is the empty set.
type Ops uint8

// AllOps holds the four operations.
const AllOps = Ops(1<<pginvalidator.OpInsert | 1<<pginvalidator.OpUpdate |
	1<<pginvalidator.OpDelete | 1<<pginvalidator.OpTruncate)

// rowOps holds the operations that carry rows, and so need column values.
const rowOps = AllOps &^ (1 << pginvalidator.OpTruncate)

// Has reports whether op is in the set.
func (s Ops) Has(op pginvalidator.Op) bool { return op < 8 && s&(1<<op) != 0 }

// With returns the set with op added.
func (s Ops) With(op pginvalidator.Op) Ops { return s | 1<<op }

// String lists the operations the way a publication's publish option does:
// "insert, update, delete, truncate".
func (s Ops) String() string {
	var names []string
	for op := pginvalidator.OpInsert; op <= pginvalidator.OpTruncate; op++ {
		if s.Has(op) {
			names = append(names, op.String())
		}
	}
	return strings.Join(names, ", ")
}

// Tables returns the distinct rule tables as "schema.table", sorted.
func (rs *Rules) Tables() []string {
	var names []string
	for _, r := range rs.List {
		names = append(names, r.QualifiedName())
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Parse reads the [[rule]] tables of the TOML document data, the content
// of the file named file. Its error, if any, is an Errors holding every
// problem found, each a *Problem. It looks at no other top-level key: the
// reader of the whole file (the config package) reports those.
func Parse(file string, data []byte) (*Rules, error) {
	doc, err := tomldoc.Parse(file, data)
	if err != nil {
		return nil, err
	}
	c := tomldoc.NewChecker(doc)
	rules := ParseDoc(c)
	if err := c.Err(); err != nil {
		return nil, err
	}
	return rules, nil
}

// ParseDoc reads the [[rule]] tables of c's document, reporting each
// problem to c. The rules it returns are complete only when c has no
// problems.
func ParseDoc(c *tomldoc.Checker) *Rules {
	p := &parser{Checker: c, uses: make(map[string]templateUse)}
	rs := &Rules{File: c.Doc.File}
	v, ok := c.Doc.Root["rule"]
	if !ok {
		c.Addf(nil, "no [[rule]] found; add at least one, with a table and del, incr or version")
		return rs
	}
	rs.List = p.rules(v)
	return rs
}

// parser reads [[rule]] tables, reporting problems to its Checker.
type parser struct {
	*tomldoc.Checker
	uses map[string]templateUse // by template text: where the rules first name it
}

// templateUse is the first del, incr or version entry naming a template.
type templateUse struct {
	kind string // "del", "incr" or "version"
	line int
}

// ruleKeys are the keys a [[rule]] allows, in the order messages list them.
var ruleKeys = []string{"table", "del", "incr", "version", "on", "redelete_after"}

func (p *parser) rules(v any) []*Rule {
	tables, ok := p.Tables("rule", v)
	if !ok {
		return nil
	}
	if len(tables) == 0 {
		p.Addf([]string{"rule"}, "no [[rule]] found; add at least one, with a table and del, incr or version")
	}
	var rules []*Rule
	for i, m := range tables {
		if m != nil {
			rules = append(rules, p.rule([]string{"rule", strconv.Itoa(i)}, m))
		}
	}
	return rules
}

func (p *parser) rule(path []string, m map[string]any) *Rule {
	r := &Rule{Line: p.Doc.Line(path...), On: AllOps}
	templates := false // whether del, incr or version names a template, valid or not
	for _, k := range tomldoc.SortedKeys(m) {
		at := tomldoc.Key(path, k)
		switch k {
		case "table":
			var s string
			if p.Str(at, m[k], &s) {
				r.Schema, r.Table = p.tableName(at, s)
			}
		case "del", "incr", "version":
			list, given := p.templates(at, k, m[k])
			templates = templates || given
			switch k {
			case "del":
				r.Del = list
			case "incr":
				r.Incr = list
			default:
				r.Version = list
			}
		case "on":
			r.On = p.ops(at, m[k])
		case "redelete_after":
			r.RedeleteAfter = p.redelete(at, m[k])
		default:
			p.Unknown(at, "[[rule]]", ruleKeys)
		}
	}
	if _, ok := m["table"]; !ok {
		p.Addf(path, `rule has no table; add table = "schema.table" (or just "table" for the public schema)`)
	}
	if !templates {
		p.Addf(path, `rule has no del, incr or version; add del = ["key:<column>"], incr = ["key"] or version = ["key"]`)
	} else if _, ok := m["del"]; !ok && r.RedeleteAfter > 0 {
		p.Addf(tomldoc.Key(path, "redelete_after"), "redelete_after applies to del keys, and this rule has none; add del = [...] or remove redelete_after")
	}
	return r
}

// maxRedelete bounds redelete_after: a transaction is acknowledged only
// once its re-deletes are sent, so a long delay holds WAL on the server
// for that long.
const maxRedelete = time.Minute

// redelete parses redelete_after, a duration from 1ms to maxRedelete.
func (p *parser) redelete(path []string, v any) time.Duration {
	var s string
	if !p.Str(path, v, &s) {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Millisecond || d > maxRedelete {
		p.Addf(path, "redelete_after %q is not a duration from 1ms to 1m; write one longer than the application's slowest read-to-SET, like \"500ms\"", s)
		return 0
	}
	return d
}

// tableName splits "schema.table", defaulting the schema to public, and
// reports a name that is not of that form.
func (p *parser) tableName(path []string, s string) (schema, table string) {
	schema, table = pginvalidator.SplitTableName(s)
	switch {
	case strings.Contains(table, "."):
		p.Addf(path, "table %q has more than one dot; write \"schema.table\", or just \"table\" for the public schema", s)
	case schema == "" || table == "":
		p.Addf(path, "table %q has an empty name; write \"schema.table\", or just \"table\" for the public schema", s)
	case strings.TrimSpace(schema) != schema || strings.TrimSpace(table) != table:
		p.Addf(path, "table %q has spaces around a name; remove them", s)
	default:
		return schema, table
	}
	return "", ""
}

// templates parses an array of templates, the rule's entry kind (del, incr
// or version). given is false when the array is empty, so that a rule with
// no templates at all can be told apart from one whose templates are wrong.
func (p *parser) templates(path []string, kind string, v any) (list []*Template, given bool) {
	strs, ok := p.Strs(path, v)
	if !ok {
		return nil, true
	}
	for i, s := range strs {
		elem := tomldoc.Key(path, strconv.Itoa(i))
		t, err := ParseTemplate(s)
		if err != nil {
			p.Addf(elem, "%s", err)
			continue
		}
		t.Line = p.Doc.Line(elem...)
		p.conflict(elem, kind, t)
		list = append(list, t)
	}
	return list, len(strs) > 0
}

// conflict reports a template that another kind of entry named before, in
// this rule or an earlier one: a key both deleted and incremented, say. Only
// template texts are compared: two different templates that render the same
// key are not found.
func (p *parser) conflict(path []string, kind string, t *Template) {
	u, seen := p.uses[t.src]
	if !seen {
		p.uses[t.src] = templateUse{kind, t.Line}
		return
	}
	if u.kind == kind {
		return
	}
	why := "INCR fails on a key that holds an LSN, and an LSN overwrites a counter; keep it in one of them"
	if u.kind == "del" || kind == "del" {
		why = "a version key that is deleted starts over, and entries cached under an old version become reachable again; remove it from del"
	}
	p.Addf(path, "template %q is in %s here and in %s at line %d; %s", t.src, kind, u.kind, u.line, why)
}

func (p *parser) ops(path []string, v any) Ops {
	names, ok := p.Strs(path, v)
	if !ok {
		return AllOps
	}
	if len(names) == 0 {
		p.Addf(path, "on is empty; list some of insert, update, delete, truncate, or remove it to handle all four")
		return AllOps
	}
	var s Ops
	for i, name := range names {
		op, ok := opNames[name]
		if !ok {
			p.Addf(tomldoc.Key(path, strconv.Itoa(i)), "on: %q is not an operation; use insert, update, delete or truncate", name)
			continue
		}
		s = s.With(op)
	}
	return s
}

var opNames = map[string]pginvalidator.Op{
	"insert":   pginvalidator.OpInsert,
	"update":   pginvalidator.OpUpdate,
	"delete":   pginvalidator.OpDelete,
	"truncate": pginvalidator.OpTruncate,
}
