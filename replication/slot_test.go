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

func TestDropSlot(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`, `CREATE PUBLICATION p FOR TABLE a`)
	conn := connect(t, db)
	ctx := context.Background()
	slot := testenv.UniqueName()
	repl := connectReplication(t, db)
	if _, err := EnsureSlot(ctx, repl, slot); err != nil {
		t.Fatal(err)
	}

	// DropLostSlot leaves a slot that can still stream alone.
	if dropped, err := DropLostSlot(ctx, conn, slot); err != nil || dropped {
		t.Fatalf("DropLostSlot on a reserved slot = %v, %v; want false, nil", dropped, err)
	}

	// DropSlot terminates the walsender streaming from it.
	err := pglogrepl.StartReplication(ctx, repl, slot, 0,
		pglogrepl.StartReplicationOptions{PluginArgs: []string{"proto_version '1'", "publication_names 'p'"}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		streaming, err := SlotStreaming(ctx, conn, slot)
		if err != nil {
			t.Fatal(err)
		}
		if streaming {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("SlotStreaming never said true")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if dropped, err := DropSlot(ctx, conn, slot); err != nil || !dropped {
		t.Fatalf("DropSlot on an active slot = %v, %v; want true, nil", dropped, err)
	}
	if got, err := SlotState(ctx, conn, slot); err != nil || got.Exists {
		t.Errorf("after DropSlot: %+v, %v", got, err)
	}
	if dropped, err := DropSlot(ctx, conn, slot); err != nil || dropped {
		t.Errorf("DropSlot on a missing slot = %v, %v; want false, nil", dropped, err)
	}
}

func TestStreamSlots(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`, `CREATE PUBLICATION p FOR TABLE a`)
	conn := connect(t, db)
	ctx := context.Background()
	slot := testenv.UniqueName()
	open := func() *Stream {
		t.Helper()
		s, err := Connect(ctx, Config{URL: db, Slot: slot, Publication: "p"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// A temporary slot goes with its connection.
	s := open()
	if err := s.CreateTemporarySlot(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := SlotState(ctx, conn, slot); err != nil || !got.Temporary {
		t.Errorf("temporary slot: %+v, %v", got, err)
	}
	s.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := SlotState(ctx, conn, slot)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Exists {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the temporary slot outlived its connection")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// EnsureSlot creates the permanent one; DropSlot drops it.
	s = open()
	defer s.Close(ctx)
	if created, err := s.EnsureSlot(ctx); err != nil || !created {
		t.Fatalf("EnsureSlot = %v, %v", created, err)
	}
	if err := s.DropSlot(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := SlotState(ctx, conn, slot); err != nil || got.Exists {
		t.Errorf("after Stream.DropSlot: %+v, %v", got, err)
	}
}

func TestEmitHeartbeat(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	slot := testenv.UniqueName()
	testenv.Exec(t, db, `SELECT pg_create_logical_replication_slot('`+slot+`', 'test_decoding')`)
	conn := connect(t, db)
	ctx := context.Background()
	if err := EmitHeartbeat(ctx, conn); err != nil {
		t.Fatal(err)
	}
	// The message is not flushed at once (it is no commit): peek, which reads
	// flushed WAL only, sees it once the WAL writer has flushed it.
	var data *string
	for deadline := time.Now().Add(10 * time.Second); data == nil; time.Sleep(20 * time.Millisecond) {
		err := conn.QueryRow(ctx, `SELECT string_agg(data, ' | ') FROM pg_logical_slot_peek_changes($1, NULL, NULL)`, slot).Scan(&data)
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no change decoded after 10s")
		}
	}
	if want := "message: transactional: 0 prefix: pg_invalidator, sz: 9 content:heartbeat"; *data != want {
		t.Errorf("decoded %q, want %q", *data, want)
	}
}
