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
	"github.com/pg-invalidator/pg-invalidator/invalidator"
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
	// CommitTime and Version are empty on partial lines: they are known
	// only at the commit. Version is what version keys are set to: the
	// transaction's end LSN as 16 hex digits.
	CommitTime string          `json:"commit_time,omitempty"`
	Version    string          `json:"version,omitempty"`
	Partial    bool            `json:"partial,omitempty"`
	Commands   []dryRunCommand `json:"commands"`
}

// dryRunCommand is a command as explain --json prints it.
type dryRunCommand struct {
	Action string `json:"action"`
	Key    string `json:"key"`
	// RedeleteAfter is the rule's redelete_after, on a del or del_pattern
	// command: a run would send it again that long after; empty: once.
	RedeleteAfter string `json:"redelete_after,omitempty"`
}

// dryRun checks the server, the role, the rules against the live schema and
// that the publication is ready, then runs the pipeline on a temporary slot
// with a sink that prints the commands of each transaction to
// cfg.DryRunOut as JSON lines instead of applying them, until ctx ends. It
// connects to neither Redis nor cfg.Slot, and changes nothing in the
// database: a missing or incomplete publication is an error that points at
// setup. The temporary slot starts at the current WAL position, so only
// transactions committed after the start are shown; it vanishes with the
// connection. A lost connection ends the dry run: a new slot would skip the
// changes in between.
func dryRun(ctx context.Context, cfg Config) error {
	cfg.Replicas = nil // it prints each transaction at once: no standby to wait for, nor to see
	out := cfg.DryRunOut
	if out == nil {
		out = os.Stdout
	}
	if err := checkDryRun(ctx, cfg); err != nil {
		return ignoreCanceled(ctx, err)
	}
	cfg.Slot = fmt.Sprintf("%s_dryrun_%d", replication.DefaultSlot, os.Getpid())
	if n := dryRunSlots.Add(1); n > 1 {
		cfg.Slot = fmt.Sprintf("%s_%d", cfg.Slot, n)
	}
	mapper := mapping.NewMapper(cfg.Rules)
	// A dry run prints a re-delete's delay with its command, and schedules
	// nothing: its redeleter stays empty.
	p := newPipeline(cfg, mapper, newMetrics(cfg.Rules, mapper, nil), newPrintSink(out, cfg.Rules.Tables()),
		newRedeleter(nil, 0, cfg.MaxBatch), nil)
	p.dryRun = true
	return ignoreCanceled(ctx, p.session(ctx))
}

// checkDryRun runs the checks run makes before it streams, without
// changing anything: the server's prerequisites for one more slot, the
// role, the schema, and the publication, which it does not create or
// extend.
func checkDryRun(ctx context.Context, cfg Config) error {
	conn, err := connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// The temporary slot is a new one, whatever slot the daemon has.
	if _, err := verify(ctx, conn, cfg, ""); err != nil {
		return err
	}
	// PublicationPlan tries what run would do in a transaction that is then
	// rolled back, and returns the statements that would be needed.
	stmts, err := replication.PublicationPlan(ctx, conn, cfg.Publication, cfg.Rules.Tables())
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

// printSink is a dry run's sink. It prints the commands of each
// transaction that changed a rule table at its commit, deduplicated, as one
// JSON line, even when the rules rendered no command; a large transaction
// gets partial lines before that (each deduplicated on its own). Nothing is
// held back, so a flush has nothing left to do, and the pipeline
// acknowledges a transaction once it is printed: the temporary slot holds
// no WAL.
type printSink struct {
	out        io.Writer
	ruleTables map[string]bool // "schema.table" of every rule table

	line    dryRunLine                     // the open transaction's line; Commands never nil, so an empty list prints as []
	changes int                            // row changes of rule tables in the open transaction
	seen    map[pginvalidator.Command]bool // commands of line, for dedupe
}

func newPrintSink(out io.Writer, tables []string) *printSink {
	s := &printSink{out: out, ruleTables: make(map[string]bool, len(tables)),
		line: dryRunLine{Commands: []dryRunCommand{}}, seen: make(map[pginvalidator.Command]bool)}
	for _, t := range tables {
		s.ruleTables[t] = true
	}
	return s
}

func (s *printSink) begin(xid uint32, final pglogrepl.LSN) {
	s.changes = 0
	s.line = dryRunLine{XID: xid, LSN: final.String(), Commands: s.line.Commands[:0]} // Version too is reset
	clear(s.seen)
}

func (s *printSink) add(ch *pginvalidator.Change, cmds []pginvalidator.Command) error {
	if s.ruleTables[ch.Rel.QualifiedName()] {
		s.changes++
	}
	for _, c := range cmds {
		if s.seen[c] {
			continue
		}
		s.seen[c] = true
		dc := dryRunCommand{Action: c.Action.String(), Key: c.Key}
		if c.Redelete > 0 {
			dc.RedeleteAfter = c.Redelete.String()
		}
		s.line.Commands = append(s.line.Commands, dc)
		// A streamed transaction's commands come many at a time.
		if len(s.line.Commands) >= dryRunChunk {
			s.line.Partial = true
			if err := s.emit(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *printSink) commit(end pglogrepl.LSN, at time.Time) error {
	s.line.Partial = false
	s.line.CommitTime = at.UTC().Format(time.RFC3339Nano)
	s.line.Version = pginvalidator.LSN(end).VersionValue()
	if s.changes == 0 {
		return nil
	}
	return s.emit()
}

// emit prints the line and empties its commands.
func (s *printSink) emit() error {
	data, err := json.Marshal(&s.line)
	if err != nil {
		return fmt.Errorf("dry run: encode transaction %d: %w", s.line.XID, err)
	}
	if _, err := s.out.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("dry run: write transaction %d: %w", s.line.XID, err)
	}
	s.line.Commands = s.line.Commands[:0]
	clear(s.seen)
	return nil
}

func (s *printSink) pending() int                { return 0 }
func (s *printSink) held() *invalidator.Batch    { return nil }
func (s *printSink) flush(context.Context) error { return nil }
func (s *printSink) reset()                      {}
