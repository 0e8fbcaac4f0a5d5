package replication

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// streamEvents collects the events of s, keepalives left out, until done
// says enough.
func streamEvents(ctx context.Context, t *testing.T, events <-chan []Event, errs <-chan error, done func([]Event) bool) []Event {
	t.Helper()
	var got []Event
	for !done(got) {
		select {
		case chunk := <-events:
			for _, ev := range chunk {
				if ev.Kind == Keepalive {
					continue
				}
				if ev.Kind == RowChange {
					ev.Change.Old, ev.Change.New = nil, nil // the arena may reuse them
				}
				got = append(got, ev)
			}
		case err := <-errs:
			t.Fatalf("stream ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("%d events after 60s, and not the ones wanted", len(got))
		}
	}
	return got
}

func countKind(evs []Event, kind EventKind) int {
	n := 0
	for _, ev := range evs {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

// TestStreamingLargeTransactions: with Streaming and a small
// logical_decoding_work_mem, a large transaction reaches the consumer
// while it runs, in blocks whose rows carry its xid, and ends with a
// StreamCommit whose end LSN is the one to acknowledge; an aborted one ends
// with a StreamAbort of the whole transaction, and a subtransaction rolled
// back to a savepoint with one that names it.
func TestStreamingLargeTransactions(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY, v text)`, `CREATE PUBLICATION p FOR TABLE a`)
	conn := connect(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := openStream(ctx, t, Config{URL: db, Publication: "p", Streaming: true, DecodingWorkMem: "64kB"})
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.Streaming() {
		t.Fatal("Streaming() = false on PostgreSQL 14 or later")
	}
	events, errs := runStream(ctx, t, s)

	// Committed: rows arrive before the COMMIT is sent.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var xid uint32
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO a SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g`); err != nil {
		t.Fatal(err)
	}
	before := streamEvents(ctx, t, events, errs, func(evs []Event) bool { return countKind(evs, RowChange) > 0 })
	if before[0].Kind != StreamStart || before[0].XID != xid || !before[0].First {
		t.Fatalf("first event %+v, want the first StreamStart of xid %d", before[0], xid)
	}
	for _, ev := range before {
		if ev.Kind == RowChange && ev.XID != xid {
			t.Fatalf("a streamed row carries xid %d, want %d", ev.XID, xid)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	after := streamEvents(ctx, t, events, errs, func(evs []Event) bool { return countKind(evs, StreamCommit) > 0 })
	all := append(before, after...)
	if n := countKind(all, RowChange); n != 5000 {
		t.Errorf("%d rows streamed, want 5000", n)
	}
	if n := countKind(all, Begin) + countKind(all, Commit); n != 0 {
		t.Errorf("%d Begin or Commit events for a streamed transaction, want none", n)
	}
	commit := after[len(after)-1]
	if commit.XID != xid || commit.Final == 0 || commit.LSN <= commit.Final || commit.CommitTime.IsZero() {
		t.Errorf("StreamCommit %+v, want xid %d, a commit position and an end LSN past it", commit, xid)
	}

	// Aborted, whole.
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO a SELECT g, repeat('y', 100) FROM generate_series(10001, 15000) g`); err != nil {
		t.Fatal(err)
	}
	streamEvents(ctx, t, events, errs, func(evs []Event) bool { return countKind(evs, StreamStop) > 0 })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// The server sends the abort with the next transaction's data, or a
	// keepalive: a small transaction makes it come now.
	if _, err := conn.Exec(ctx, `INSERT INTO a VALUES (0, 'z')`); err != nil {
		t.Fatal(err)
	}
	got := streamEvents(ctx, t, events, errs, func(evs []Event) bool { return countKind(evs, Commit) > 0 })
	var abort *Event
	for i := range got {
		if got[i].Kind == StreamAbort {
			abort = &got[i]
		}
	}
	if abort == nil || abort.SubXID != abort.XID {
		t.Fatalf("events after the rollback %v, want a StreamAbort of the whole transaction", kinds(got))
	}

	// A subtransaction rolled back, the transaction committed.
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO a SELECT g, repeat('s', 100) FROM generate_series(20001, 25000) g`,
		`SAVEPOINT sp`,
		`INSERT INTO a SELECT g, repeat('t', 100) FROM generate_series(30001, 35000) g`,
		`ROLLBACK TO SAVEPOINT sp`,
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got = streamEvents(ctx, t, events, errs, func(evs []Event) bool { return countKind(evs, StreamCommit) > 0 })
	abort = nil
	for i := range got {
		if got[i].Kind == StreamAbort {
			abort = &got[i]
		}
	}
	if abort == nil || abort.SubXID == abort.XID {
		t.Errorf("events of a transaction with a subtransaction rolled back %v, want a StreamAbort of the subtransaction", kinds(got))
	}
}

// kinds lists the kinds of evs, runs of one kind counted, for messages.
func kinds(evs []Event) []string {
	var out []string
	names := map[EventKind]string{Begin: "Begin", RowChange: "Row", Commit: "Commit", Keepalive: "Keepalive", Canary: "Canary",
		StreamStart: "StreamStart", StreamStop: "StreamStop", StreamCommit: "StreamCommit", StreamAbort: "StreamAbort"}
	for i := 0; i < len(evs); {
		j := i
		for j < len(evs) && evs[j].Kind == evs[i].Kind {
			j++
		}
		name := names[evs[i].Kind]
		if j-i > 1 {
			name += "×" + strconv.Itoa(j-i)
		}
		out = append(out, name)
		i = j
	}
	return out
}
