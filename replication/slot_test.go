package replication

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestEnsureSlot(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	conn := connect(t, db)
	repl := connectReplication(t, db)
	ctx := context.Background()
	slot := testenv.UniqueName()

	got, err := SlotState(ctx, conn, slot)
	if want := (SlotInfo{Name: slot}); err != nil || got != want {
		t.Errorf("before: got %+v, %v; want %+v", got, err, want)
	}

	for i, want := range []bool{true, false} {
		created, err := EnsureSlot(ctx, repl, slot)
		if err != nil || created != want {
			t.Errorf("call %d: got %v, %v; want %v, nil", i+1, created, err, want)
		}
	}

	got, err = SlotState(ctx, conn, slot)
	if err != nil {
		t.Fatal(err)
	}
	if got.ConfirmedFlushLSN == 0 {
		t.Errorf("confirmed_flush_lsn is 0")
	}
	got.ConfirmedFlushLSN = 0
	want := SlotInfo{Name: slot, Exists: true, Type: "logical", Plugin: "pgoutput",
		Database: lastPathSegment(t, db), WALStatus: "reserved", SafeWALSize: -1} // no max_slot_wal_keep_size
	if got != want {
		t.Errorf("after:\n got %+v\nwant %+v", got, want)
	}
	if err := got.Check(lastPathSegment(t, db)); err != nil {
		t.Error(err)
	}
}

func TestEnsureSlotActive(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`, `CREATE PUBLICATION p FOR TABLE a`)
	ctx := context.Background()
	slot := testenv.UniqueName()
	repl := connectReplication(t, db)
	if _, err := EnsureSlot(ctx, repl, slot); err != nil {
		t.Fatal(err)
	}
	// A walsender streams from the slot; ReadSlot shows its pid.
	pid := repl.PID()
	err := pglogrepl.StartReplication(ctx, repl, slot, 0,
		pglogrepl.StartReplicationOptions{PluginArgs: []string{"proto_version '1'", "publication_names 'p'"}})
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, db)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := SlotState(ctx, conn, slot)
		if err != nil {
			t.Fatal(err)
		}
		if got.ActivePID == int32(pid) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("active_pid: got %d, want %d", got.ActivePID, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEnsureSlotUnusable(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	other := testenv.NewDatabase(t, env.PostgresURL)
	dbName, otherName := lastPathSegment(t, db), lastPathSegment(t, other)
	decoding := testenv.UniqueName()
	elsewhere := testenv.UniqueName()
	testenv.Exec(t, db, `SELECT pg_create_logical_replication_slot('`+decoding+`', 'test_decoding')`)
	testenv.Exec(t, other, `SELECT pg_create_logical_replication_slot('`+elsewhere+`', 'pgoutput')`)
	repl := connectReplication(t, db)

	tests := []struct {
		slot string
		want string
	}{
		{decoding, "replication slot " + decoding + " uses plugin test_decoding, not pgoutput; " +
			"drop it with SELECT pg_drop_replication_slot('" + decoding + "') or choose another slot name"},
		{elsewhere, "replication slot " + elsewhere + " belongs to database " + otherName + ", not " + dbName +
			"; choose another slot name"},
		{"Bad-Name", `create replication slot "Bad-Name": a slot name is 1 to 63 lowercase letters, digits and underscores`},
	}
	for _, tt := range tests {
		created, err := EnsureSlot(context.Background(), repl, tt.slot)
		if created || err == nil || err.Error() != tt.want {
			t.Errorf("%s: got %v, %v; want false, %q", tt.slot, created, err, tt.want)
		}
	}
}
