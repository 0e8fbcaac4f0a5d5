package daemon

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// reload is validated rules on their way to the pipeline, which closes
// swapped once they are in force.
type reload struct {
	rules   *mapping.Rules
	swapped chan struct{}
}

// watchReloads re-reads the rules on every request from cfg.Reload,
// validates them against the live schema, and puts them in force with their
// tables in the publication (see reload). A file that fails validation, or
// whose tables the publication cannot take, changes nothing: the old rules
// stay in force and the log says why.
func (p *pipeline) watchReloads(ctx context.Context, current *mapping.Rules) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.cfg.Reload:
		}
		rules, err := p.reload(ctx, current)
		if rules != nil {
			current = rules
		}
		switch {
		case err == nil || ctx.Err() != nil:
		case rules == nil:
			p.log.Error("reload failed; the old rules stay in force", "err", err)
		default:
			p.log.Error("reloaded rules are in force, but their tables could not be added to the publication; reload again", "err", err)
		}
	}
}

// reload loads and validates the new rules, puts them in force, and only
// then adds their new tables to the publication, in a statement of its
// own: a change to a new table can reach the stream only after that, so
// the new rules map it; the old ones, which know nothing of the table,
// never see it. No transaction stays open while the pipeline swaps the
// rules (which waits for the transaction in progress, or for Redis): slot
// creation would wait for it, and vacuum too.
//
// The changes made to a new table before it joined the publication were
// never streamed, so the catalog watch flushes its keys, as it flushes
// those of a table that start adds.
//
// Last, it drops the tables the old rules named and the new ones do not,
// when this role owns the publication. It returns the rules in force when
// they are, even with an error.
func (p *pipeline) reload(ctx context.Context, old *mapping.Rules) (*mapping.Rules, error) {
	rules, err := p.cfg.LoadRules()
	if err != nil {
		return nil, err
	}
	conn, err := connect(ctx, p.cfg)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	if err := checkSchema(ctx, conn, rules); err != nil {
		return nil, err
	}
	if p.redis != nil && IncrKeys(old) == "" && IncrKeys(rules) != "" {
		ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
		warnEvictions(ectx, p.log, rules, p.redis) // the first incr rules: Redis may evict their keys
		cancel()
	}
	r := reload{rules: rules, swapped: make(chan struct{})}
	p.reloaded <- r // empty: every reload waits for its swap
	select {
	case <-r.swapped:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	_, added, err := ensurePublication(ctx, p.cfg, conn, rules.Tables())
	p.m.cover.setRules(rules) // the catalog watch checks the new tables once they are in
	if err != nil {
		return rules, fmt.Errorf("add the rule tables to publication %s: %w", p.cfg.Publication, err)
	}
	if len(added) > 0 {
		p.log.Info("tables added to publication", "publication", p.cfg.Publication, "tables", added)
		p.m.cover.addedByReload(added)
	}

	var gone []string
	for _, t := range old.Tables() {
		if !slices.Contains(rules.Tables(), t) {
			gone = append(gone, t)
		}
	}
	if len(gone) > 0 {
		if err := replication.DropTablesFromPublication(ctx, conn, p.cfg.Publication, gone); err != nil {
			// The daemon ignores changes to tables no rule names, so a table
			// left in the publication costs only decoding.
			p.log.Warn("tables no rule names stay in the publication", "publication", p.cfg.Publication, "tables", gone, "err", err)
		} else {
			p.log.Info("tables dropped from publication", "publication", p.cfg.Publication, "tables", gone)
		}
	}
	return rules, nil
}
