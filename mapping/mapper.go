package mapping

import (
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// Mapper turns changes into commands by one set of Rules. Commands
// must be called from one goroutine at a time; Stats may be called from any.
//
// For each relation it compiles a plan, the templates that apply with the
// column index of each placeholder, and reuses it for as long as changes
// carry the same *pginvalidator.Relation. A new pointer, which the stream
// makes for every Relation message, gets a new plan that replaces the one
// for the same relation ID.
type Mapper struct {
	// OnProblem, if not nil, is called once per relation and template when
	// the template names a column that the relation, as the stream announced
	// it, does not have (after a DROP or RENAME COLUMN, say), and its rule
	// handles insert, update or delete. err is a *Problem pointing at the
	// template's line. The template then renders nothing for that relation's
	// rows, though a truncate still turns it into a pattern; the other
	// templates keep working. Nil: such templates are only counted in
	// Stats.SkippedUnknownColumn.
	OnProblem func(table, column string, err error)

	file  string
	rules map[string][]*Rule // by "schema.table"
	plans map[uint32]*plan   // by Relation.ID; a plan is reused only for its own *Relation
	last  *plan              // the plan of the previous change; nil: none yet
	buf   []byte             // scratch space for rendering one key

	skippedNull, skippedUnavailable, skippedUnknownColumn atomic.Uint64
	del, incr, delPattern, incrPattern                    atomic.Uint64
	version, versionPattern                               atomic.Uint64
}

// Stats counts what a Mapper has done since it was made.
type Stats struct {
	// SkippedNull counts keys not rendered because a placeholder's column
	// was NULL in the row.
	SkippedNull uint64
	// SkippedUnavailable counts keys not rendered because the stream did not
	// send a placeholder's value: an unchanged TOASTed value with no full
	// old row to take it from, or an old value outside the replica identity.
	SkippedUnavailable uint64
	// SkippedUnknownColumn counts template renderings skipped because the
	// relation has no column of that name (see Mapper.OnProblem).
	SkippedUnknownColumn uint64
	// Del, Incr, DelPattern, IncrPattern, Version and VersionPattern count
	// the commands produced, by action, after deduplication within each
	// change.
	Del, Incr, DelPattern, IncrPattern, Version, VersionPattern uint64
}

// NewMapper returns a Mapper for rs.
func NewMapper(rs *Rules) *Mapper {
	m := &Mapper{}
	m.SetRules(rs)
	return m
}

// SetRules replaces the Mapper's rules with rs, keeping its counters. Call
// it between transactions, from the goroutine that calls Commands; the next
// change compiles its plan against the new rules.
func (m *Mapper) SetRules(rs *Rules) {
	m.file = rs.File
	m.rules = make(map[string][]*Rule)
	m.plans = make(map[uint32]*plan)
	m.last = nil
	for _, r := range rs.List {
		m.rules[r.QualifiedName()] = append(m.rules[r.QualifiedName()], r)
	}
}

// Stats returns the counters so far.
func (m *Mapper) Stats() Stats {
	return Stats{
		SkippedNull:          m.skippedNull.Load(),
		SkippedUnavailable:   m.skippedUnavailable.Load(),
		SkippedUnknownColumn: m.skippedUnknownColumn.Load(),
		Del:                  m.del.Load(),
		Incr:                 m.incr.Load(),
		DelPattern:           m.delPattern.Load(),
		IncrPattern:          m.incrPattern.Load(),
		Version:              m.version.Load(),
		VersionPattern:       m.versionPattern.Load(),
	}
}

// plan is the templates that apply to one relation, compiled against its
// column list.
type plan struct {
	rel   *pginvalidator.Relation
	steps []step
}

// step is one template of one rule, compiled for one relation.
type step struct {
	on       Ops
	action   pginvalidator.Action // Del, Incr or Version
	redelete time.Duration        // the rule's RedeleteAfter, on a Del step; zero otherwise
	t        *Template
	cols     []int // the relation's column index for each placeholder
	missing  bool  // a placeholder names a column the relation lacks
}

func (m *Mapper) plan(rel *pginvalidator.Relation) *plan {
	if m.last != nil && m.last.rel == rel {
		return m.last
	}
	p := m.plans[rel.ID]
	if p == nil || p.rel != rel {
		p = m.compile(rel)
		m.plans[rel.ID] = p
	}
	m.last = p
	return p
}

func (m *Mapper) compile(rel *pginvalidator.Relation) *plan {
	p := &plan{rel: rel}
	for _, r := range m.rules[rel.QualifiedName()] {
		for _, t := range r.Del {
			p.steps = append(p.steps, m.step(rel, r, pginvalidator.Del, t))
		}
		for _, t := range r.Incr {
			p.steps = append(p.steps, m.step(rel, r, pginvalidator.Incr, t))
		}
		for _, t := range r.Version {
			p.steps = append(p.steps, m.step(rel, r, pginvalidator.Version, t))
		}
	}
	return p
}

func (m *Mapper) step(rel *pginvalidator.Relation, r *Rule, a pginvalidator.Action, t *Template) step {
	s := step{on: r.On, action: a, t: t, cols: make([]int, len(t.cols))}
	if a == pginvalidator.Del {
		s.redelete = r.RedeleteAfter
	}
	for i, name := range t.cols {
		s.cols[i] = -1
		for j, c := range rel.Columns {
			if c.Name == name {
				s.cols[i] = j
				break
			}
		}
		if s.cols[i] < 0 && !s.missing {
			s.missing = true
			if m.OnProblem != nil && r.On&rowOps != 0 {
				names := make([]string, len(rel.Columns))
				for j, c := range rel.Columns {
					names[j] = c.Name
				}
				m.OnProblem(rel.QualifiedName(), name, &Problem{File: m.file, Line: t.Line, Msg: fmt.Sprintf(
					"table %s has no column %q in the replication stream (dropped or renamed?), so template %q is skipped for it; its columns are: %s; fix the rule and restart",
					rel.QualifiedName(), name, t, strings.Join(names, ", "))})
			}
		}
	}
	return s
}

// Commands appends the commands for one change to dst and returns it.
// Commands within the change are deduplicated; those already in dst are
// neither looked at nor changed.
func (m *Mapper) Commands(dst []pginvalidator.Command, ch *pginvalidator.Change) []pginvalidator.Command {
	if ch == nil || ch.Rel == nil {
		return dst
	}
	p := m.plan(ch.Rel)
	start := len(dst)
	for i := range p.steps {
		s := &p.steps[i]
		if !s.on.Has(ch.Op) {
			continue
		}
		if ch.Op == pginvalidator.OpTruncate {
			dst = m.truncate(dst, start, s)
			continue
		}
		if s.missing {
			m.skippedUnknownColumn.Add(1)
			continue
		}
		switch ch.Op {
		case pginvalidator.OpInsert:
			dst = m.render(dst, start, s, ch.Rel, ch.New, nil, false)
		case pginvalidator.OpDelete:
			dst = m.render(dst, start, s, ch.Rel, ch.Old, nil, ch.OldKeyOnly)
		case pginvalidator.OpUpdate:
			// An unchanged TOASTed new value is the old one, if we have it.
			var full pginvalidator.Row
			if !ch.OldKeyOnly {
				full = ch.Old
			}
			dst = m.render(dst, start, s, ch.Rel, ch.New, full, false)
			if ch.Old != nil { // nil: the key did not change, so the old key is the new one
				dst = m.render(dst, start, s, ch.Rel, ch.Old, nil, ch.OldKeyOnly)
			}
		}
	}
	return dst
}

func (m *Mapper) truncate(dst []pginvalidator.Command, start int, s *step) []pginvalidator.Command {
	if len(s.t.cols) == 0 {
		return m.add(dst, start, s.action, s.t.key, s.redelete)
	}
	return m.add(dst, start, patternAction(s.action), s.t.glob, s.redelete)
}

// patternAction returns the action that does a to every key matching a
// pattern.
func patternAction(a pginvalidator.Action) pginvalidator.Action {
	switch a {
	case pginvalidator.Incr:
		return pginvalidator.IncrPattern
	case pginvalidator.Version:
		return pginvalidator.VersionPattern
	}
	return pginvalidator.DelPattern
}

// Results of looking up one value.
const (
	valueOK = iota
	valueNull
	valueUnavailable
)

// value returns column i of row. fallback, if not nil, is a full old row
// that stands in for unchanged TOASTed values; keyOnly says only the
// relation's key columns of row hold values.
func value(rel *pginvalidator.Relation, row, fallback pginvalidator.Row, keyOnly bool, i int) ([]byte, int) {
	if i >= len(row) {
		return nil, valueUnavailable
	}
	switch v := row[i]; v.Kind {
	case pginvalidator.ValueText:
		return v.Data, valueOK
	case pginvalidator.ValueNull:
		if keyOnly && !rel.Columns[i].Key {
			return nil, valueUnavailable
		}
		return nil, valueNull
	case pginvalidator.ValueUnchanged:
		if fallback != nil {
			return value(rel, fallback, nil, false, i)
		}
	}
	return nil, valueUnavailable
}

// render renders s's template against row and appends the key, unless it is
// already among dst[start:] or a value is missing.
func (m *Mapper) render(dst []pginvalidator.Command, start int, s *step, rel *pginvalidator.Relation, row, fallback pginvalidator.Row, keyOnly bool) []pginvalidator.Command {
	t := s.t
	if len(t.cols) == 0 {
		return m.add(dst, start, s.action, t.key, s.redelete)
	}
	b := m.buf[:0]
	for i, col := range s.cols {
		data, status := value(rel, row, fallback, keyOnly, col)
		switch status {
		case valueNull:
			m.skippedNull.Add(1)
			return dst
		case valueUnavailable:
			m.skippedUnavailable.Add(1)
			return dst
		}
		b = append(b, t.lits[i]...)
		b = append(b, data...)
	}
	b = append(b, t.lits[len(t.cols)]...)
	m.buf = b
	for i := range dst[start:] {
		if c := &dst[start+i]; c.Action == s.action && c.Key == string(b) {
			c.Redelete = max(c.Redelete, s.redelete)
			return dst
		}
	}
	return m.add(dst, len(dst), s.action, string(b), s.redelete)
}

// add appends a command unless it is already among dst[start:]; then the
// one there keeps the longer of the two re-delete delays.
func (m *Mapper) add(dst []pginvalidator.Command, start int, a pginvalidator.Action, key string, redelete time.Duration) []pginvalidator.Command {
	for i := range dst[start:] {
		if c := &dst[start+i]; c.Action == a && c.Key == key {
			c.Redelete = max(c.Redelete, redelete)
			return dst
		}
	}
	switch a {
	case pginvalidator.Del:
		m.del.Add(1)
	case pginvalidator.Incr:
		m.incr.Add(1)
	case pginvalidator.DelPattern:
		m.delPattern.Add(1)
	case pginvalidator.IncrPattern:
		m.incrPattern.Add(1)
	case pginvalidator.Version:
		m.version.Add(1)
	case pginvalidator.VersionPattern:
		m.versionPattern.Add(1)
	}
	return append(dst, pginvalidator.Command{Action: a, Key: key, Redelete: redelete})
}

// FlushCommands returns the commands that invalidate every key the rules can
// render: each template the way a TRUNCATE of its table would (a key without
// placeholders is deleted, incremented or set to an LSN, a template with
// placeholders becomes a pattern), whatever the rule's on. A resync after a
// lost slot runs them, since any change may have been missed. Each command
// appears once.
func (rs *Rules) FlushCommands() []pginvalidator.Command { return rs.flushCommands("") }

// TableFlushCommands returns the FlushCommands of the rules for one table
// ("schema.table", as Tables names it): what the daemon runs when changes to
// that table went unstreamed, such as a table swapped for a new one, or a
// partition dropped. A table no rule names gets none.
func (rs *Rules) TableFlushCommands(table string) []pginvalidator.Command {
	if table == "" {
		return nil
	}
	return rs.flushCommands(table)
}

// flushCommands returns the flush commands of the rules for table, or of
// every rule when table is "". A Del or DelPattern command carries the
// longest redelete_after of the rules that render it, as a TRUNCATE's do.
func (rs *Rules) flushCommands(table string) []pginvalidator.Command {
	var out []pginvalidator.Command
	seen := make(map[pginvalidator.Command]int) // by Action and Key, Redelete zero: its index in out
	add := func(a pginvalidator.Action, t *Template, redelete time.Duration) {
		cmd := pginvalidator.Command{Action: a, Key: t.key}
		if len(t.cols) > 0 {
			cmd = pginvalidator.Command{Action: patternAction(a), Key: t.glob}
		}
		if i, ok := seen[cmd]; ok {
			out[i].Redelete = max(out[i].Redelete, redelete)
			return
		}
		seen[cmd] = len(out)
		cmd.Redelete = redelete
		out = append(out, cmd)
	}
	for _, r := range rs.List {
		if table != "" && r.QualifiedName() != table {
			continue
		}
		for _, t := range r.Del {
			add(pginvalidator.Del, t, r.RedeleteAfter)
		}
		for _, t := range r.Incr {
			add(pginvalidator.Incr, t, 0)
		}
		for _, t := range r.Version {
			add(pginvalidator.Version, t, 0)
		}
	}
	return out
}
