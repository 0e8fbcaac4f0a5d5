package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/config"
	"github.com/pg-invalidator/pg-invalidator/mapping"
)

// explainCommand prints the Redis commands that one row change, given by
// flags, would produce under the rules, and why each template that renders
// no key renders none, without connecting to anything.
func explainCommand(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var e explainFlags
	e.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := e.validate(fs); err != nil {
		return err
	}

	f, err := loadFile(e.configPath)
	if err != nil {
		return err
	}
	schema, name := pginvalidator.SplitTableName(e.table)
	rules, err := tableRules(f, schema+"."+name)
	if err != nil {
		return err
	}
	oldFields, err := parseRow(e.oldRow)
	if err != nil {
		return fmt.Errorf("--old: %w", err)
	}
	newFields, err := parseRow(e.newRow)
	if err != nil {
		return fmt.Errorf("--new: %w", err)
	}

	rel := explainRelation(schema, name, rules, slices.Concat(newFields, oldFields))
	ch := &pginvalidator.Change{Rel: rel, Op: e.op}
	if e.hasOld {
		ch.Old = buildRow(rel, oldFields)
	}
	if e.hasNew {
		ch.New = buildRow(rel, newFields)
	}
	cmds := mapping.NewMapper(f.Rules).Commands(nil, ch)
	notes := explainSkips(f.Path, rules, ch, oldFields, newFields)
	if e.asJSON {
		return printExplainJSON(stdout, cmds, notes)
	}
	printExplain(stdout, cmds, notes)
	return nil
}

// explainFlags are the explain subcommand's flags. register binds the
// first group; validate fills in the second from them.
type explainFlags struct {
	configPath, table, opName, oldRow, newRow string
	asJSON                                    bool

	op             pginvalidator.Op // parsed from opName
	hasOld, hasNew bool             // --old or --new was given, even as ""
}

// register binds e's flags in fs and sets fs's usage text.
func (e *explainFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&e.configPath, "config", "rules.toml", "rules file")
	fs.StringVar(&e.table, "table", "", `the changed table, "schema.table" or "table" in public (required)`)
	fs.StringVar(&e.opName, "op", "", "the operation: insert, update, delete or truncate (required)")
	fs.StringVar(&e.oldRow, "old", "", "the old row, for update and delete: col=value,col=value")
	fs.StringVar(&e.newRow, "new", "", "the new row, for insert and update: col=value,col=value")
	fs.BoolVar(&e.asJSON, "json", false, `print JSON lines: {"action":"del","key":"..."} per command, {"line":...,"skipped":"..."} per note`)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pg-invalidator explain --table T --op OP [--old ROW] [--new ROW] [flags]

Prints the Redis commands one row change would produce under the rules, one
per line, without connecting to anything:

  UNLINK key         delete one key
  INCR key           increment one version key
  VERSION key        set one version key to the transaction's end LSN, if later
  SCAN+UNLINK glob   delete every key matching the pattern (truncate)
  SCAN+INCR glob     increment every existing key matching it (truncate)
  SCAN+VERSION glob  set every existing key matching it to the LSN (truncate)

Then, as lines starting with "#", each template that renders no key and why.

Rows are comma-separated col=value pairs, values as PostgreSQL prints them:
  --old id=1,category_id=3 --new id=1,category_id=5
A backslash makes the next character literal: "\," is a comma inside a
value, "\\" a backslash. The bare value NULL is SQL NULL ("\NULL" is the
text NULL), and "col=" is the empty string. A column not given is NULL.

insert takes --new, delete --old, update --new and usually --old, truncate
neither. The old row is taken as the whole row, as under REPLICA IDENTITY
FULL; "check" tells whether the live table sends it. An update without
--old is one whose key did not change under REPLICA IDENTITY DEFAULT:
PostgreSQL then sends no old row, so only the new row's keys are rendered.

Flags:
`)
		fs.PrintDefaults()
	}
}

// validate reads the flags fs has parsed: it sets e.op, e.hasOld and
// e.hasNew, and returns an error when --table or --op is missing (after
// printing the usage: errUsage), when --op names no operation, or when
// --old and --new do not fit the operation.
func (e *explainFlags) validate(fs *flag.FlagSet) error {
	if e.table == "" || e.opName == "" {
		fmt.Fprintln(fs.Output(), "explain needs --table and --op")
		fs.Usage()
		return errUsage
	}
	op, ok := parseOp(e.opName)
	if !ok {
		return fmt.Errorf("--op %q: want insert, update, delete or truncate", e.opName)
	}
	e.op = op
	fs.Visit(func(f *flag.Flag) {
		e.hasOld = e.hasOld || f.Name == "old"
		e.hasNew = e.hasNew || f.Name == "new"
	})
	switch {
	case op == pginvalidator.OpInsert && e.hasOld:
		return errors.New("--old: an insert has no old row; give --new")
	case op == pginvalidator.OpDelete && e.hasNew:
		return errors.New("--new: a delete has no new row; give --old")
	case op == pginvalidator.OpTruncate && (e.hasOld || e.hasNew):
		return errors.New("a truncate has no rows; leave out --old and --new")
	case op == pginvalidator.OpInsert && !e.hasNew, op == pginvalidator.OpUpdate && !e.hasNew:
		return fmt.Errorf("an %s needs --new", op)
	case op == pginvalidator.OpDelete && !e.hasOld:
		return errors.New("a delete needs --old")
	}
	return nil
}

// tableRules returns the rules of f for the table qualified
// ("schema.table"), in file order, or an error that lists f's rule tables
// when it has none.
func tableRules(f *config.File, qualified string) ([]*mapping.Rule, error) {
	var rules []*mapping.Rule
	for _, r := range f.Rules.List {
		if r.QualifiedName() == qualified {
			rules = append(rules, r)
		}
	}
	if len(rules) == 0 {
		return nil, fmt.Errorf("%s has no rule for table %s; its rule tables are: %s", f.Path, qualified, strings.Join(f.Rules.Tables(), ", "))
	}
	return rules, nil
}

// explainRelation returns the relation an explained change is on: table
// schema.name under REPLICA IDENTITY FULL, with a column for each of
// fields and then for each column the rules' templates use, each once, in
// that order. A column a row does not give is NULL in it.
func explainRelation(schema, name string, rules []*mapping.Rule, fields []field) *pginvalidator.Relation {
	rel := &pginvalidator.Relation{ID: 1, Schema: schema, Name: name, ReplicaIdentity: pginvalidator.IdentityFull}
	addColumn := func(c string) {
		if !slices.ContainsFunc(rel.Columns, func(col pginvalidator.Column) bool { return col.Name == c }) {
			rel.Columns = append(rel.Columns, pginvalidator.Column{Name: c})
		}
	}
	for _, f := range fields {
		addColumn(f.col)
	}
	for _, r := range rules {
		for _, t := range r.Templates() {
			for _, c := range t.Columns() {
				addColumn(c)
			}
		}
	}
	return rel
}

// printExplainJSON writes cmds to w as JSON lines, one object per command
// (action, key and, for a second delete, redelete_after), then notes, one
// object each. It returns the first write error.
func printExplainJSON(w io.Writer, cmds []pginvalidator.Command, notes []explainNote) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, c := range cmds {
		var redelete string
		if c.Redelete > 0 {
			redelete = c.Redelete.String()
		}
		if err := enc.Encode(struct {
			Action        string `json:"action"`
			Key           string `json:"key"`
			RedeleteAfter string `json:"redelete_after,omitempty"`
		}{c.Action.String(), c.Key, redelete}); err != nil {
			return err
		}
	}
	for _, n := range notes {
		if err := enc.Encode(n); err != nil {
			return err
		}
	}
	return nil
}

// printExplain writes cmds to w as text, one command a line (with the delay
// of a second delete, if any), then notes as "#" lines.
func printExplain(w io.Writer, cmds []pginvalidator.Command, notes []explainNote) {
	for _, c := range cmds {
		if c.Redelete > 0 {
			fmt.Fprintf(w, "%s, again after %s\n", commandText(c), c.Redelete)
			continue
		}
		fmt.Fprintln(w, commandText(c))
	}
	for _, n := range notes {
		fmt.Fprintln(w, n.text())
	}
}

// parseOp returns the operation named s ("insert", "update", "delete" or
// "truncate"), and false when s names none.
func parseOp(s string) (pginvalidator.Op, bool) {
	for op := pginvalidator.OpInsert; op <= pginvalidator.OpTruncate; op++ {
		if op.String() == s {
			return op, true
		}
	}
	return 0, false
}

// field is one col=value of a --old or --new row.
type field struct {
	col string
	val pginvalidator.Value
}

// parseRow parses "col=value,col=value". A backslash makes the next
// character literal; the unescaped value NULL is SQL NULL.
func parseRow(s string) ([]field, error) {
	if s == "" {
		return nil, nil
	}
	var fields []field
	var b strings.Builder
	var col string
	inValue, escaped := false, false // escaped: the value so far had a backslash
	end := func() error {
		if !inValue {
			return fmt.Errorf("%q has no \"=\"; write col=value", b.String())
		}
		if col == "" {
			return errors.New(`empty column name before "="`)
		}
		for _, f := range fields {
			if f.col == col {
				return fmt.Errorf("column %s is given twice", col)
			}
		}
		f := field{col: col, val: pginvalidator.Value{Kind: pginvalidator.ValueText, Data: []byte(b.String())}}
		if b.String() == "NULL" && !escaped {
			f.val = pginvalidator.Value{Kind: pginvalidator.ValueNull}
		}
		fields = append(fields, f)
		b.Reset()
		col, inValue, escaped = "", false, false
		return nil
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			if i+1 == len(s) {
				return nil, errors.New(`a "\" at the end escapes nothing; write "\\" for a backslash`)
			}
			i++
			b.WriteByte(s[i])
			escaped = escaped || inValue
		case c == '=' && !inValue:
			col, inValue = b.String(), true
			b.Reset()
		case c == ',':
			if err := end(); err != nil {
				return nil, err
			}
		default:
			b.WriteByte(c)
		}
	}
	if err := end(); err != nil {
		return nil, err
	}
	return fields, nil
}

// buildRow lays fields out in rel's column order; columns not given are NULL.
func buildRow(rel *pginvalidator.Relation, fields []field) pginvalidator.Row {
	row := make(pginvalidator.Row, len(rel.Columns))
	for _, f := range fields {
		for i, c := range rel.Columns {
			if c.Name == f.col {
				row[i] = f.val
			}
		}
	}
	return row
}

// commandText returns c as explain prints it: "UNLINK key", "SCAN+INCR glob"
// and so on, as its usage lists them.
func commandText(c pginvalidator.Command) string {
	switch c.Action {
	case pginvalidator.Del:
		return "UNLINK " + c.Key
	case pginvalidator.Incr:
		return "INCR " + c.Key
	case pginvalidator.DelPattern:
		return "SCAN+UNLINK " + c.Key
	case pginvalidator.IncrPattern:
		return "SCAN+INCR " + c.Key
	case pginvalidator.Version:
		return "VERSION " + c.Key
	case pginvalidator.VersionPattern:
		return "SCAN+VERSION " + c.Key
	}
	return c.Action.String() + " " + c.Key
}

// explainNote says why a rule or template produced nothing for a change.
type explainNote struct {
	File     string `json:"-"`
	Line     int    `json:"line"`
	Template string `json:"template,omitempty"`
	Row      string `json:"row,omitempty"` // "old" or "new"; empty for a whole rule
	Reason   string `json:"skipped"`
}

// text returns n as explain prints it: a "#" comment that names the file
// and line, and the template and row when there are some.
func (n explainNote) text() string {
	if n.Template == "" {
		return fmt.Sprintf("# %s:%d: %s", n.File, n.Line, n.Reason)
	}
	return fmt.Sprintf("# %s:%d: %s renders no key for the %s row: %s", n.File, n.Line, n.Template, n.Row, n.Reason)
}

// explainSkips lists, in rule order, the rules that do not handle ch.Op and
// the templates that render no key for a row because a column is NULL:
// the cases Mapper counts in Stats.SkippedNull. Explain rows are whole rows,
// so no value is ever unavailable.
func explainSkips(file string, rules []*mapping.Rule, ch *pginvalidator.Change, oldFields, newFields []field) []explainNote {
	var notes []explainNote
	type row struct {
		name   string
		values pginvalidator.Row
		fields []field
	}
	var rows []row
	if ch.New != nil {
		rows = append(rows, row{"new", ch.New, newFields})
	}
	if ch.Old != nil && ch.Op != pginvalidator.OpInsert {
		rows = append(rows, row{"old", ch.Old, oldFields})
	}
	for _, r := range rules {
		if !r.On.Has(ch.Op) {
			notes = append(notes, explainNote{File: file, Line: r.Line,
				Reason: fmt.Sprintf("rule for %s does not handle %s (on = %s)", r.QualifiedName(), ch.Op, r.On)})
			continue
		}
		if ch.Op == pginvalidator.OpTruncate {
			continue
		}
		for _, t := range r.Templates() {
			for _, rw := range rows {
				for _, c := range t.Columns() {
					i := slices.IndexFunc(ch.Rel.Columns, func(col pginvalidator.Column) bool { return col.Name == c })
					if rw.values[i].Kind != pginvalidator.ValueNull {
						continue
					}
					reason := c + " is NULL"
					if !slices.ContainsFunc(rw.fields, func(f field) bool { return f.col == c }) {
						reason = c + " is not given, so NULL"
					}
					notes = append(notes, explainNote{File: file, Line: t.Line, Template: t.String(), Row: rw.name, Reason: reason})
					break
				}
			}
		}
	}
	return notes
}
