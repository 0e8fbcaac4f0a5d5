package localsvc

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStandby starts a primary and a standby of it, and sees a row written
// on the primary appear on the standby, and the standby under its name in
// the primary's pg_stat_replication.
func TestStandby(t *testing.T) {
	ctx := context.Background()
	pg, err := StartPostgres(ctx, PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	sb, err := StartStandby(ctx, pg, StandbyOptions{Name: "standby1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })

	p, err := pgx.Connect(ctx, pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(ctx)
	s, err := pgx.Connect(ctx, sb.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if _, err := p.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	var end uint64
	p.QueryRow(ctx, "SELECT pg_current_wal_lsn() - '0/0'").Scan(&end)
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	var replayedAt, reportedAt time.Duration
	for replayedAt == 0 || reportedAt == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after 60s: replayed at %v, reported at %v", replayedAt, reportedAt)
		}
		var v int
		if replayedAt == 0 && s.QueryRow(ctx, "SELECT v FROM t").Scan(&v) == nil && v == 7 {
			replayedAt = time.Since(start)
		}
		var reported bool
		if reportedAt == 0 && p.QueryRow(ctx, "SELECT replay_lsn - '0/0' >= $1 FROM pg_stat_replication WHERE application_name = 'standby1'", end).Scan(&reported) == nil && reported {
			reportedAt = time.Since(start)
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("the standby showed the row after %v; the primary's pg_stat_replication showed it replayed after %v", replayedAt, reportedAt)
}
