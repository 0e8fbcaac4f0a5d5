package replication

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// TestHandleLive checks the two ways chunks reach a consumer that set a
// LiveHandler: a backlog (commits older than behindAfter) through the
// channel, and live transactions through the handler on the reader's
// goroutine, with every commit once and in WAL order across both, and no
// live chunk handled before the channel's chunks were reported Handled.
// The consumer is slower than the reader, so that chunks wait in the
// channel when the stream turns live.
func TestHandleLive(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY, v int)`, `CREATE PUBLICATION p FOR TABLE a`)
	conn := connect(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := openStream(ctx, t, Config{URL: db, Publication: "p"})
	// The backlog: 300 transactions, old by the time the stream starts.
	const backlog, live = 300, 20
	if _, err := conn.Exec(ctx, `INSERT INTO a SELECT g, 0 FROM generate_series(1, 2) g`); err != nil {
		t.Fatal(err)
	}
	for range backlog - 1 {
		if _, err := conn.Exec(ctx, `UPDATE a SET v = v + 1 WHERE id = 1`); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * behindAfter)
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}

	var (
		mu       sync.Mutex
		commits  []pglogrepl.LSN // every commit, in the order the consumer saw it
		inline   int             // commits handled by the handler
		early    int             // live chunks handled while a channel chunk was not yet Handled
		queued   int             // channel chunks received and not yet Handled
		received = make(chan struct{}, 1)
	)
	record := func(chunk []Event, byHandler bool) {
		mu.Lock()
		defer mu.Unlock()
		if byHandler && queued > 0 {
			early++
		}
		for _, ev := range chunk {
			if ev.Kind == Commit {
				commits = append(commits, ev.LSN)
				if byHandler {
					inline++
				}
			}
		}
		select {
		case received <- struct{}{}:
		default:
		}
	}
	s.HandleLive(func(chunk []Event) (bool, error) {
		record(chunk, true)
		return true, nil
	})
	events, done := runStream(ctx, t, s)

	count := func() (all, byHandler int) {
		mu.Lock()
		defer mu.Unlock()
		return len(commits), inline
	}
	wrote := 0
	for {
		select {
		case chunk := <-events:
			mu.Lock()
			queued++
			mu.Unlock()
			time.Sleep(time.Millisecond) // a consumer slower than the reader: live chunks must wait
			record(chunk, false)
			mu.Lock()
			queued--
			mu.Unlock()
			s.Handled(chunk)
		case <-received:
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-ctx.Done():
			all, byHandler := count()
			t.Fatalf("after 60s: %d commits of %d, %d by the handler", all, backlog+live, byHandler)
		}
		all, _ := count()
		if all < backlog {
			continue
		}
		if all == backlog+live {
			break
		}
		// Caught up: one live transaction at a time, each after the last
		// was seen, so that each arrives live.
		if wrote < live && all == backlog+wrote {
			if _, err := conn.Exec(ctx, `UPDATE a SET v = v + 1 WHERE id = 2`); err != nil {
				t.Fatal(err)
			}
			wrote++
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(commits); i++ {
		if commits[i] <= commits[i-1] {
			t.Fatalf("commit %d at %s after commit %d at %s: out of WAL order", i, commits[i], i-1, commits[i-1])
		}
	}
	if inline < live/2 {
		t.Errorf("%d of %d live transactions went to the handler, want most", inline, live)
	}
	// The backlog's tail may go to the handler: once the walsender has sent
	// it all, its keepalive says the stream is live, and the chunk that
	// ends with it is a live one.
	if inline == len(commits) {
		t.Errorf("all %d commits went to the handler, want the backlog's head through the channel", inline)
	}
	if early > 0 {
		t.Errorf("%d live chunks handled before the channel's chunks were handled", early)
	}
}

// TestStatusGap checks that a consumer acknowledging every live transaction
// sends the server far fewer status updates than transactions, at most one
// per minStatusGap and a few more, and that the last acknowledgement still
// reaches the slot's confirmed_flush_lsn soon after.
func TestStatusGap(t *testing.T) {
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
	var (
		last    atomic.Uint64 // the last commit acknowledged
		commits atomic.Int64
	)
	handle := func(chunk []Event) {
		for _, ev := range chunk {
			if ev.Kind == Commit {
				s.Ack(ev.LSN)
				last.Store(uint64(ev.LSN))
				commits.Add(1)
			}
		}
	}
	s.HandleLive(func(chunk []Event) (bool, error) {
		handle(chunk)
		return true, nil
	})
	events, done := runStream(ctx, t, s)

	const txs = 300
	start := time.Now()
	for range txs {
		if _, err := conn.Exec(ctx, `UPDATE a SET v = v + 1 WHERE id = 1`); err != nil {
			t.Fatal(err)
		}
	}
	for commits.Load() < txs {
		select {
		case chunk := <-events: // not live: handled the same way
			handle(chunk)
			s.Handled(chunk)
		case <-done:
			t.Fatal("stream ended")
		case <-ctx.Done():
			t.Fatalf("%d commits after 60s, want %d", commits.Load(), txs)
		case <-time.After(5 * time.Millisecond):
		}
	}
	// The last acknowledgement reaches the slot within a gap.
	var confirmed pglogrepl.LSN
	for {
		err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&confirmed)
		if err != nil {
			t.Fatal(err)
		}
		if confirmed == pglogrepl.LSN(last.Load()) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("confirmed_flush_lsn %s, want the last acknowledgement %s", confirmed, pglogrepl.LSN(last.Load()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	max := int64(elapsed/minStatusGap) + 5
	if n := s.status.count.Load(); n > max || n > txs/4 {
		t.Errorf("%d status updates for %d transactions in %s, want at most %d (one per %s), and a quarter of the transactions", n, txs, elapsed, max, minStatusGap)
	}
}
