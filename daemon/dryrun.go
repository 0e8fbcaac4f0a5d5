package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// dryRunChunk is how many distinct commands of one transaction are held
// before they are printed as a partial line, so that memory stays bounded
// whatever the transaction's size.
const dryRunChunk = 1000

// dryRunSlots numbers the temporary slots of this process, so that two dry
// runs in one process do not collide.
var dryRunSlots atomic.Int64

// dryRunLine is one line of dry-run output: the commands of one
// transaction, or of a part of one when Partial is set.
type dryRunLine struct {
	XID uint32 `json:"xid"`
	// LSN is the position of the transaction's commit record.
	LSN string `json:"lsn"`
	// CommitTime is empty on partial lines: it is known only at the commit.
	CommitTime string          `json:"commit_time,omitempty"`
	Partial    bool            `json:"partial,omitempty"`
	Commands   []dryRunCommand `json:"commands"`
}

// dryRunCommand is a command as explain --json prints it.
type dryRunCommand struct {
	Action string `json:"action"`
	Key    string `json:"key"`
}

// dryRun validates the rules against the live schema, checks that the
// publication is ready, and streams from a temporary slot, printing the
// commands of each transaction to cfg.DryRunOut as JSON lines, until ctx
// ends. It connects to neither Redis nor cfg.Slot, and changes nothing in
// the database: a missing or incomplete publication is an error that points
// at setup. The temporary slot starts at the current WAL position, so only
// transactions committed after the start are shown; it vanishes with the
// connection. A lost connection ends the dry run: a new slot would skip the
// changes in between.
func dryRun(ctx context.Context, cfg Config) error {
	out := cfg.DryRunOut
	if out == nil {
		out = os.Stdout
	}
	if err := checkDryRun(ctx, cfg); err != nil {
		return ignoreCanceled(ctx, err)
	}

	slot := fmt.Sprintf("pg_invalidator_dryrun_%d", os.Getpid())
	if n := dryRunSlots.Add(1); n > 1 {
		slot = fmt.Sprintf("%s_%d", slot, n)
	}
	stream, err := replication.Connect(ctx, replication.Config{
		URL:            cfg.PostgresURL,
		Slot:           slot,
		Publication:    cfg.Publication,
		StatusInterval: cfg.StatusInterval,
		Logger:         cfg.Logger,
	})
	if err != nil {
		return ignoreCanceled(ctx, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		stream.Close(cctx) // the temporary slot goes with the connection
	}()
	_, err = pglogrepl.CreateReplicationSlot(ctx, stream.Conn(), slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		return ignoreCanceled(ctx, fmt.Errorf("create temporary replication slot %s: %w", slot, err))
	}
	if err := stream.Start(ctx); err != nil {
		return ignoreCanceled(ctx, err)
	}
	cfg.Logger.Info("dry run: streaming from a temporary slot; only transactions committed from now on are shown, and nothing is applied",
		"slot", slot, "publication", cfg.Publication)

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	events := make(chan []replication.Event, 4)
	streamErr := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() { streamErr <- stream.Run(sctx, events); close(readerDone) }()

	mapper := mapping.NewMapper(cfg.Rules)
	mapper.OnProblem = func(table, column string, err error) {
		cfg.Logger.Error("rule cannot be applied", "table", table, "column", column, "err", err)
	}
	err = dryRunConsume(ctx, stream, mapper, cfg.Rules.Tables(), events, streamErr, out)
	stop()
	<-readerDone // the deferred Close may write to the connection only after the reader left it
	return ignoreCanceled(ctx, err)
}

// checkDryRun runs the checks run makes before it streams, without
// changing anything: the schema, and the publication, which it does not
// create or extend.
func checkDryRun(ctx context.Context, cfg Config) error {
	conn, err := connect(ctx, cfg.PostgresURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := checkSchema(ctx, conn, cfg.Rules); err != nil {
		return err
	}
	// PublicationSQL tries what run would do in a transaction that is then
	// rolled back, and returns the statements that would be needed.
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("check publication %s: %w", cfg.Publication, err)
	}
	stmts, err := replication.PublicationSQL(ctx, tx, cfg.Publication, cfg.Rules.Tables())
	if rbErr := tx.Rollback(ctx); rbErr != nil && err == nil {
		err = fmt.Errorf("check publication %s: %w", cfg.Publication, rbErr)
	}
	if err != nil {
		return err
	}
	if len(stmts) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "publication %s is missing or does not serve every rule table, and --dry-run changes nothing in the database; "+
		"run pg-invalidator setup --config %s (add --apply to run it), or run the daemon once without --dry-run. It would run:", cfg.Publication, cfg.Rules.File)
	for _, s := range stmts {
		if s.Why != "" {
			fmt.Fprintf(&b, "\n-- %s", s.Why)
		}
		fmt.Fprintf(&b, "\n%s;", s.SQL)
	}
	return fatal(fmt.Errorf("%s", b.String()))
}

// dryRunConsume renders each transaction's changes with the rules and
// prints its commands, deduplicated, at the commit: one line per
// transaction that changed a rule table, even when it rendered no command,
// and partial lines before it for a large one (deduplicated per line). It acknowledges each transaction once printed, and the
// server's position when idle, so the temporary slot does not hold WAL.
func dryRunConsume(ctx context.Context, stream *replication.Stream, mapper *mapping.Mapper, tables []string,
	events <-chan []replication.Event, streamErr <-chan error, out io.Writer) error {
	ruleTables := make(map[string]bool, len(tables))
	for _, t := range tables {
		ruleTables[t] = true
	}
	var (
		inTx    bool
		line    = dryRunLine{Commands: []dryRunCommand{}} // never nil: an empty list prints as []
		changes int                                       // row changes of rule tables in the open transaction
		seen    = make(map[pginvalidator.Command]bool)    // commands of line, for dedupe
		cmds    []pginvalidator.Command
	)
	emit := func() error {
		data, err := json.Marshal(&line)
		if err != nil {
			return fmt.Errorf("dry run: encode transaction %d: %w", line.XID, err)
		}
		if _, err := out.Write(append(data, '\n')); err != nil {
			return fmt.Errorf("dry run: write transaction %d: %w", line.XID, err)
		}
		line.Commands = line.Commands[:0]
		clear(seen)
		return nil
	}
	for {
		var chunk []replication.Event
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-streamErr:
			return err
		case chunk = <-events:
		}
		for i := range chunk {
			ev := &chunk[i]
			switch ev.Kind {
			case replication.Begin:
				inTx, changes = true, 0
				line = dryRunLine{XID: ev.XID, LSN: ev.LSN.String(), Commands: line.Commands[:0]}
			case replication.RowChange:
				if ruleTables[ev.Change.Rel.QualifiedName()] {
					changes++
				}
				cmds = mapper.Commands(cmds[:0], &ev.Change)
				for _, c := range cmds {
					if seen[c] {
						continue
					}
					seen[c] = true
					line.Commands = append(line.Commands, dryRunCommand{Action: c.Action.String(), Key: c.Key})
				}
				if len(line.Commands) >= dryRunChunk {
					line.Partial = true
					if err := emit(); err != nil {
						return err
					}
				}
			case replication.Commit:
				inTx = false
				line.Partial = false
				line.CommitTime = ev.CommitTime.UTC().Format(time.RFC3339Nano)
				if changes > 0 {
					if err := emit(); err != nil {
						return err
					}
				}
				stream.Ack(ev.LSN)
			case replication.Idle:
				if !inTx {
					stream.Ack(ev.LSN)
				}
			}
		}
	}
}
