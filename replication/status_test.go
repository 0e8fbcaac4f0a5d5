package replication

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// TestAckDuringStatusUpdate acknowledges a position while a status update
// is being written (through the seam beforeWrite), with no timed update to
// come for an hour: the new position must reach the slot at once, not with
// the next timed update.
func TestAckDuringStatusUpdate(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY, v int)`, `CREATE PUBLICATION p FOR TABLE a`,
		`INSERT INTO a VALUES (1, 0)`)
	conn := connect(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := openStream(ctx, t, Config{URL: db, Publication: "p", StatusInterval: time.Hour})
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	events, done := runStream(ctx, t, s)
	for range 3 {
		if _, err := conn.Exec(ctx, `UPDATE a SET v = v + 1 WHERE id = 1`); err != nil {
			t.Fatal(err)
		}
	}
	var commits []pglogrepl.LSN
	for len(commits) < 3 {
		select {
		case chunk := <-events:
			for _, ev := range chunk {
				if ev.Kind == Commit {
					commits = append(commits, ev.LSN)
				}
			}
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("%d commits after 60s, want 3", len(commits))
		}
	}
	confirmed := func() pglogrepl.LSN {
		var lsn pglogrepl.LSN
		err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&lsn)
		if err != nil {
			t.Fatal(err)
		}
		return lsn
	}
	waitConfirmed := func(want pglogrepl.LSN, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			got := confirmed()
			if got >= want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("confirmed_flush_lsn %s %s after the acknowledgement, want %s", got, within, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	s.Ack(commits[0])
	waitConfirmed(commits[0], 5*time.Second)
	// The next update carries commits[1]; while it is written, commits[2]
	// is acknowledged.
	var once sync.Once
	s.status.mu.Lock()
	s.status.beforeWrite = func() {
		if pglogrepl.LSN(s.status.acked.Load()) == commits[1] {
			once.Do(func() { s.Ack(commits[2]) })
		}
	}
	s.status.mu.Unlock()
	s.Ack(commits[1])
	waitConfirmed(commits[2], 2*time.Second)
}
