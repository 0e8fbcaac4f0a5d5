package replication

import (
	"context"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// TestStreamCanary checks that a stream on PostgreSQL 14 or later passes
// the canaries of its own slot, inside their transaction, and leaves out a
// canary for another slot and a plain heartbeat.
func TestStreamCanary(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`, `CREATE PUBLICATION p FOR TABLE a`)
	conn := connect(t, db)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	slot := testenv.UniqueName()
	s := openStream(ctx, t, Config{URL: db, Slot: slot, Publication: "p"})
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.Messages() {
		t.Fatalf("Messages() = false on %s, want true (PostgreSQL 14 and later)", conn.PgConn().ParameterStatus("server_version"))
	}
	events, done := runStream(ctx, t, s)

	for _, emit := range []func() error{
		func() error { return EmitHeartbeat(ctx, conn) },
		func() error { return EmitCanary(ctx, conn, "other_slot", "t1") },
		func() error { return EmitCanary(ctx, conn, slot, "t2") },
	} {
		if err := emit(); err != nil {
			t.Fatal(err)
		}
	}
	var kinds []EventKind
	for {
		select {
		case chunk := <-events:
			for _, ev := range chunk {
				if ev.Kind == Keepalive {
					continue
				}
				kinds = append(kinds, ev.Kind)
				if ev.Kind == Canary && ev.Token != "t2" {
					t.Fatalf("canary token %q, want t2", ev.Token)
				}
			}
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("no canary after 60s; events %v", kinds)
		}
		if n := len(kinds); n > 0 && kinds[n-1] == Commit && n >= 3 && kinds[n-2] == Canary {
			break
		}
	}
	// The other slot's canary is a transaction too, and arrives empty.
	want := []EventKind{Begin, Commit, Begin, Canary, Commit}
	if len(kinds) != len(want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("events %v, want %v", kinds, want)
		}
	}
}

func TestCanaryToken(t *testing.T) {
	tests := []struct {
		prefix, content, slot string
		want                  string
		ok                    bool
	}{
		{"pg_invalidator", "canary s1 abc.1", "s1", "abc.1", true},
		{"pg_invalidator", "canary s2 abc.1", "s1", "", false},
		{"pg_invalidator", "heartbeat", "s1", "", false},
		{"pg_invalidator", "canary s1", "s1", "", false},
		{"pg_invalidator", "canary s1 ", "s1", "", false},
		{"someone_else", "canary s1 abc.1", "s1", "", false},
	}
	for _, tt := range tests {
		got, ok := canaryToken(tt.prefix, []byte(tt.content), tt.slot)
		if got != tt.want || ok != tt.ok {
			t.Errorf("canaryToken(%q, %q, %q) = %q, %v; want %q, %v", tt.prefix, tt.content, tt.slot, got, ok, tt.want, tt.ok)
		}
	}
}

// TestEmitCanaryOnAClosedConnection: a canary that could not even be sent
// is known not to be written.
func TestEmitCanaryOnAClosedConnection(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	conn := connect(t, db)
	conn.Close(context.Background())
	err := EmitCanary(context.Background(), conn, "s1", "t1")
	if err == nil || !NotWritten(err) {
		t.Errorf("EmitCanary on a closed connection = %v, NotWritten %v; want an error that was not written", err, NotWritten(err))
	}
}
