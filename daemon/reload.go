package daemon

import (
	"context"
	"slices"
	"time"

	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// watchReloads re-reads the rules on every request from cfg.Reload,
// validates them against the live schema, brings the publication in line,
// and hands them to the pipeline, which swaps them in between transactions.
// A file that fails any step changes nothing: the old rules stay in force
// and the log says why.
func (p *pipeline) watchReloads(ctx context.Context, current *mapping.Rules) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.cfg.Reload:
		}
		rules, err := p.prepareReload(ctx, current)
		if err != nil {
			if ctx.Err() == nil {
				p.log.Error("reload failed; the old rules stay in force", "err", err)
			}
			continue
		}
		if p.redis != nil && IncrKeys(current) == "" && IncrKeys(rules) != "" {
			ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
			warnEvictions(ectx, p.log, rules, p.redis) // the first incr rules: Redis may evict their keys
			cancel()
		}
		current = rules
		// Only the newest validated rules matter: replace any not yet taken.
		select {
		case <-p.reloaded:
		default:
		}
		p.reloaded <- rules
	}
}

// prepareReload loads and validates the new rules, adds their new tables to
// the publication, and drops the tables the old rules named and the new ones
// do not, when this role owns the publication.
func (p *pipeline) prepareReload(ctx context.Context, old *mapping.Rules) (*mapping.Rules, error) {
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
	_, added, err := replication.EnsurePublication(ctx, conn, p.cfg.Publication, rules.Tables())
	if err != nil {
		return nil, err
	}
	if len(added) > 0 {
		p.log.Info("tables added to publication", "publication", p.cfg.Publication, "tables", added)
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
