package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

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
	conn, err := connect(ctx, p.cfg.PostgresURL)
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
		if err := dropFromPublication(ctx, conn, p.cfg.Publication, gone); err != nil {
			// The daemon ignores changes to tables no rule names, so a table
			// left in the publication costs only decoding.
			p.log.Warn("tables no rule names stay in the publication", "publication", p.cfg.Publication, "tables", gone, "err", err)
		} else {
			p.log.Info("tables dropped from publication", "publication", p.cfg.Publication, "tables", gone)
		}
	}
	return rules, nil
}

// dropFromPublication removes tables from a publication this role owns.
func dropFromPublication(ctx context.Context, conn *pgx.Conn, publication string, tables []string) error {
	var owner bool
	err := conn.QueryRow(ctx, `SELECT pubowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
		FROM pg_publication WHERE pubname = $1`, publication).Scan(&owner)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", publication, err)
	}
	if !owner {
		return errors.New("the publication belongs to another role; a DBA may drop them")
	}
	for _, t := range tables {
		schema, name, _ := splitQualified(t)
		var member bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr
			JOIN pg_publication p ON p.oid = pr.prpubid
			JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE p.pubname = $1 AND n.nspname = $2 AND c.relname = $3)`, publication, schema, name).Scan(&member)
		if err != nil {
			return fmt.Errorf("read publication %s: %w", publication, err)
		}
		if !member {
			continue
		}
		sql := fmt.Sprintf("ALTER PUBLICATION %s DROP TABLE %s",
			pgx.Identifier{publication}.Sanitize(), pgx.Identifier{schema, name}.Sanitize())
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	return nil
}

// splitQualified splits "schema.table" as mapping.Rules.Tables writes it.
func splitQualified(t string) (schema, name string, ok bool) {
	for i := 0; i < len(t); i++ {
		if t[i] == '.' {
			return t[:i], t[i+1:], true
		}
	}
	return "public", t, false
}
