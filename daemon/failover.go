package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// A failover slot (PostgreSQL 17 and later) survives a failover only to a
// standby that holds a usable copy: synced, and no longer temporary, which
// a new slot becomes some seconds after it is created. The daemon reads
// the copies on the standbys its URL names (a multi-host URL, the servers
// a failover would promote) with each poll of the slot, and reports them:
// pg_invalidator_failover_slot_ready, a /readyz note, and check.

// failoverCopies reads the standbys' copies of slot when it is a failover
// slot; nil otherwise. A standby that cannot be read counts as not ready.
func failoverCopies(ctx context.Context, cfg Config, slot replication.SlotInfo) []replication.FailoverCopy {
	if !slot.Exists || !slot.Failover {
		return nil
	}
	copies, err := replication.FailoverCopies(ctx, cfg.PostgresURL, cfg.Slot, 5*time.Second)
	if err != nil {
		cfg.Logger.Debug("read the standbys' copies of the failover slot", "err", err)
	}
	return copies
}

// failoverNotes are /readyz's lines for the standbys without a usable copy:
// the daemon works, but a failover now would lose the slot.
func failoverNotes(copies []replication.FailoverCopy) []string {
	var notes []string
	for _, c := range copies {
		switch {
		case c.Err != nil:
			notes = append(notes, fmt.Sprintf("degraded: standby %s: its copy of the failover slot cannot be read (%v); a failover to it may lose the slot", c.Addr, c.Err))
		case !c.Ready:
			notes = append(notes, fmt.Sprintf("degraded: standby %s holds no usable copy of the failover slot (%s): a failover to it now loses the slot", c.Addr, c.State))
		}
	}
	return notes
}

// CheckFailoverCopies reads the daemon's slot on the server of
// cfg.PostgresURL and, when it is a failover slot, every standby's copy, as
// the metrics do, with the settings each standby lacks; for check. warning
// is set when the primary lists no standby slot in
// synchronized_standby_slots. No slot, or one without the option: nothing.
func CheckFailoverCopies(ctx context.Context, cfg Config) (copies []replication.FailoverCopy, warning string, err error) {
	cfg.setDefaults()
	conn, err := connect(ctx, cfg)
	if err != nil {
		return nil, "", err
	}
	defer conn.Close(context.Background())
	slot, err := replication.SlotState(ctx, conn, cfg.Slot)
	if err != nil || !slot.Exists || !slot.Failover {
		return nil, "", err
	}
	warning, err = replication.StandbySlotsUnset(ctx, conn)
	if err != nil {
		return nil, "", err
	}
	return failoverCopies(ctx, cfg, slot), warning, nil
}
