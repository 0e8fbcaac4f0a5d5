package daemon

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// The daemon keeps three notes about its slot in every Redis target, with
// no expiry, beside the entries they protect: a Redis that was emptied
// forgets them and holds nothing stale either (docs/high-availability.md
// says why not in PostgreSQL).
//
//   - The slot's marker (SlotMarker) says that the slot existed: a process
//     that finds it but not the slot knows the slot was lost, and never
//     takes the loss for a first start.
//   - The catalog reading (CatalogMarker) is what the catalog watch last saw
//     of the rule tables: a daemon compares its first reading with it, so
//     that a table swapped or a partition detached while no daemon ran is
//     flushed (coverage.go).
//   - The resync marker (ResyncMarker) says that a resync created a new slot
//     and has not finished its flush yet: whatever stops it (a blip, SIGTERM,
//     kill -9), the next session finds it and flushes before it streams.
//
// Their keys hold the server's system identifier, the database and the
// slot, so that one Redis used beside several servers (a staging server, a
// restored copy) keeps their notes apart. A physical standby promoted in a
// failover keeps the identifier, and so its notes.

// SlotMarkerPrefix begins the key of every note: SlotMarkerPrefix, then the
// server's system identifier, the database and the slot, as in
// "pg-invalidator:slot:7316489301838262839:app:pg_invalidator".
const SlotMarkerPrefix = "pg-invalidator:slot:"

// SlotMarker is the key of the marker of slot in database db of the server
// whose system identifier is sysid.
func SlotMarker(sysid, db, slot string) string {
	return SlotMarkerPrefix + sysid + ":" + db + ":" + slot
}

// CatalogMarker is the key under which the catalog watch saves its last
// reading of the rule tables, as JSON: the slot's marker and ":catalog".
func CatalogMarker(sysid, db, slot string) string { return SlotMarker(sysid, db, slot) + ":catalog" }

// ResyncMarker is the key of the resync marker: the slot's marker and
// ":resync".
func ResyncMarker(sysid, db, slot string) string { return SlotMarker(sysid, db, slot) + ":resync" }

// InvalidatedMarker is the key of the note of where the daemon last
// invalidated (see fork.go): the slot's marker and ":invalidated".
func InvalidatedMarker(sysid, db, slot string) string {
	return SlotMarker(sysid, db, slot) + ":invalidated"
}

// legacySlotMarker is the slot marker's key before it held the system
// identifier (versions of November 2026), read where the new one is
// missing, so that an upgrade keeps what the older daemon remembered.
func legacySlotMarker(db, slot string) string { return SlotMarkerPrefix + db + ":" + slot }

// markerKeys are the keys of one slot's notes.
type markerKeys struct {
	slot, catalog, resync     string
	invalidated               string // where the daemon last invalidated (fork.go)
	legacySlot, legacyCatalog string // the same before the system identifier; read only
}

func newMarkerKeys(id replication.Identity, slot string) markerKeys {
	legacy := legacySlotMarker(id.Database, slot)
	return markerKeys{
		slot:          SlotMarker(id.SystemID, id.Database, slot),
		catalog:       CatalogMarker(id.SystemID, id.Database, slot),
		resync:        ResyncMarker(id.SystemID, id.Database, slot),
		invalidated:   InvalidatedMarker(id.SystemID, id.Database, slot),
		legacySlot:    legacy,
		legacyCatalog: legacy + ":catalog",
	}
}

// slotMarkerValue is what the slot's marker holds: a note for a human.
func slotMarkerValue(slot string, now time.Time) string {
	return fmt.Sprintf("replication slot %s existed at %s", slot, now.UTC().Format(time.RFC3339))
}

// slotRemembered returns the key and target of the slot's marker in the
// first target that holds it, the legacy key where no target holds the
// new one; "" when none does.
func (f fanout) slotRemembered(ctx context.Context, keys markerKeys) (key, target string, err error) {
	for _, key := range []string{keys.slot, keys.legacySlot} {
		target, err := f.MarkerIn(ctx, key)
		if err != nil || target != "" {
			return key, target, err
		}
	}
	return "", "", nil
}

// Values of the resync marker. A value that begins with resyncPending
// means the flush is to do.
const (
	resyncPending = "pending: "
	resyncDone    = "done: "
)

// resyncBegins sets the resync marker in every target, before the new slot
// is created: once it exists, changes are streamed from its start, and
// only the flush covers those made before.
func (f fanout) resyncBegins(ctx context.Context, keys markerKeys, slot, why string, now time.Time) error {
	value := fmt.Sprintf("%sslot %s recreated at %s (%s); its flush has not finished", resyncPending, slot, now.UTC().Format(time.RFC3339), why)
	if err := f.SetMarker(ctx, keys.resync, value); err != nil {
		return fmt.Errorf("note the resync in redis before the slot is recreated: %w", err)
	}
	return nil
}

// resyncDone marks the resync's flush done in every target.
func (f fanout) resyncFinished(ctx context.Context, keys markerKeys, slot string, now time.Time) error {
	value := fmt.Sprintf("%sslot %s flushed at %s", resyncDone, slot, now.UTC().Format(time.RFC3339))
	if err := f.SetMarker(ctx, keys.resync, value); err != nil {
		return fmt.Errorf("note the end of the resync's flush in redis: %w", err)
	}
	return nil
}

// resyncUnfinished returns what the resync marker holds in the first
// target whose marker says the flush is still to do; "" when none says so.
// A Redis user that may not read the markers (an ACL of an older version,
// without GET on them) cannot tell: its error wraps
// invalidator.ErrNoPermission.
func (f fanout) resyncUnfinished(ctx context.Context, keys markerKeys) (string, error) {
	for _, t := range f {
		v, ok, err := t.inv.Marker(ctx, keys.resync)
		if err != nil {
			return "", wrapTarget(t.name, len(f), err)
		}
		if ok && strings.HasPrefix(v, resyncPending) {
			return v, nil
		}
	}
	return "", nil
}

// rememberSlot sets the slot's marker in every target, once the slot is
// known to exist (once per process on a standby, before every session that
// streams on the active daemon; the catalog watch sets it again every
// minute while a session streams, for a Redis emptied meanwhile).
func (p *pipeline) rememberSlot(ctx context.Context) error {
	if err := p.redis.SetMarker(ctx, p.markers.slot, slotMarkerValue(p.cfg.Slot, time.Now())); err != nil {
		return fmt.Errorf("set the replication slot's marker: %w", err)
	}
	p.remembered = true
	return nil
}
