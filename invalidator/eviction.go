package invalidator

import (
	"context"
	"fmt"
	"strings"
)

// Eviction is what one Redis master says about evicting keys when it runs
// out of memory.
type Eviction struct {
	// Addr is the master's host:port in a cluster; for a single server or
	// a sentinel-managed master, Invalidator.Addr.
	Addr string
	// Policy is the master's maxmemory-policy, such as "allkeys-lru" or
	// "noeviction"; empty when Err is set.
	Policy string
	// Err says why the policy could not be read: Redis did not answer, the
	// ACL user may not run CONFIG GET (NOPERM), or a managed service
	// disabled or renamed CONFIG. Nil when Policy is set.
	Err error
}

// EvictsAnyKey reports whether the policy may evict a key that has no TTL:
// the allkeys-* policies. Under them Redis may evict a version key.
func (e Eviction) EvictsAnyKey() bool { return strings.HasPrefix(e.Policy, "allkeys-") }

// Evictions reads maxmemory-policy with CONFIG GET from every master: the
// one server, the master the sentinels name, or every master of a
// cluster. Replicas are not asked: by default they ignore maxmemory and
// leave eviction to their master. It tries once and does not retry;
// whatever fails is in the entry's Err, and when the cluster's masters
// cannot be listed at all the one entry, for Addr, says why.
func (inv *Invalidator) Evictions(ctx context.Context) []Eviction {
	masters, err := inv.masters(ctx)
	if err != nil {
		return []Eviction{{Addr: inv.addr, Err: fmt.Errorf("list the cluster's masters: %w", inv.redactErr(err))}}
	}
	out := make([]Eviction, len(masters))
	for i, m := range masters {
		e := &out[i]
		e.Addr = inv.addr
		if inv.cluster != nil {
			e.Addr = m.Options().Addr
		}
		vals, err := m.ConfigGet(ctx, "maxmemory-policy").Result()
		switch {
		case err != nil:
			e.Err = fmt.Errorf("CONFIG GET maxmemory-policy: %w", inv.redactErr(err))
		case vals["maxmemory-policy"] == "":
			e.Err = fmt.Errorf("CONFIG GET maxmemory-policy: no value in the reply")
		default:
			e.Policy = vals["maxmemory-policy"]
		}
	}
	return out
}
