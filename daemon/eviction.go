package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
)

// An INCR version key that Redis evicts comes back at 1 with the next
// INCR, and entries cached under the old version 1 are then served again:
// stale data, silently. Redis evicts keys without a TTL, version keys
// included, only under the allkeys-* policies. So when a rule uses incr,
// check and run read maxmemory-policy from every master of every target and
// warn where it is allkeys-*, or where it cannot be read. They do not stop:
// the operator may know better (maxmemory 0 never evicts), and a managed
// Redis often forbids CONFIG.

// EvictionRisk is what one Redis master of one target says about evicting
// the version keys that rules increment.
type EvictionRisk struct {
	Target string // the target's name
	invalidator.Eviction
}

// Safe reports whether Redis said its policy never evicts a key without a
// TTL.
func (r EvictionRisk) Safe() bool { return r.Err == nil && !r.EvictsAnyKey() }

// Warning says what is wrong and how to fix it, in one line that names
// neither the target nor the address; "" when Safe. keys lists some incr
// templates (see IncrKeys).
func (r EvictionRisk) Warning(keys string) string { return r.warning(keys, true) }

// warning is Warning, with Err in the text or not.
func (r EvictionRisk) warning(keys string, withErr bool) string {
	const fix = "fix: a volatile-* policy (such as volatile-lru) with version keys kept without a TTL, or version = [...] instead of incr in the rules"
	switch {
	case r.Err != nil:
		why := ""
		if withErr {
			why = fmt.Sprintf(" (%v)", r.Err)
		}
		return fmt.Sprintf("could not read maxmemory-policy%s; rules increment version keys (%s), which Redis must never evict: "+
			"if the policy is allkeys-*, an evicted key restarts at 1 and entries cached under old versions become reachable again; %s",
			why, keys, fix)
	case r.EvictsAnyKey():
		return fmt.Sprintf("maxmemory-policy %s lets Redis evict the version keys that rules increment (%s): after an eviction INCR restarts a key at 1, "+
			"and entries cached under old versions become reachable again (stale data); %s", r.Policy, keys, fix)
	}
	return ""
}

// IncrKeys lists the incr templates of rules, at most three, for messages;
// "" when no rule uses incr.
func IncrKeys(rules *mapping.Rules) string {
	var keys []string
	n := 0
	for _, r := range rules.List {
		for _, t := range r.Incr {
			if n < 3 {
				keys = append(keys, t.String())
			}
			n++
		}
	}
	if n > 3 {
		keys = append(keys, fmt.Sprintf("and %d more", n-3))
	}
	return strings.Join(keys, ", ")
}

// CheckEvictions reads maxmemory-policy from every master of every target
// of cfg, once, when a rule of cfg.Rules uses incr; it returns nil when none
// does. A target that cannot be reached, or whose Invalidator cannot be
// built, gives one risk whose Err says why. It connects for this alone and
// closes its connections before it returns.
func CheckEvictions(ctx context.Context, cfg Config) []EvictionRisk {
	if IncrKeys(cfg.Rules) == "" {
		return nil
	}
	cfg.setDefaults()
	var out []EvictionRisk
	for _, t := range cfg.Targets {
		opts := t.Redis
		opts.Logger = slog.New(slog.DiscardHandler)
		inv, err := invalidator.New(opts)
		if err != nil {
			out = append(out, EvictionRisk{Target: t.Name, Eviction: invalidator.Eviction{Err: err}})
			continue
		}
		for _, e := range inv.Evictions(ctx) {
			out = append(out, EvictionRisk{Target: t.Name, Eviction: e})
		}
		inv.Close()
	}
	return out
}

// warnEvictions logs a warning for each master of each target whose
// policy may evict the version keys that rules increment, or could not be
// read; nothing when no rule uses incr.
func warnEvictions(ctx context.Context, log *slog.Logger, rules *mapping.Rules, targets fanout) {
	keys := IncrKeys(rules)
	if keys == "" {
		return
	}
	for _, t := range targets {
		for _, e := range t.inv.Evictions(ctx) {
			r := EvictionRisk{Target: t.name, Eviction: e}
			if r.Safe() {
				continue
			}
			args := []any{"addr", e.Addr}
			if len(targets) > 1 || t.name != DefaultTarget {
				args = append([]any{"target", t.name}, args...)
			}
			if e.Policy != "" {
				args = append(args, "policy", e.Policy)
			}
			if e.Err != nil {
				args = append(args, "err", e.Err)
			}
			log.Warn(r.warning(keys, false), args...)
		}
	}
}
