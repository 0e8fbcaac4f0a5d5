package replication

import (
	"context"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestDropPublication(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`, `CREATE PUBLICATION "Mixed Case" FOR TABLE a`)
	conn := connect(t, db)
	ctx := context.Background()

	for i, want := range []bool{true, false} {
		exists, err := PublicationExists(ctx, conn, "Mixed Case")
		if err != nil || exists != want {
			t.Errorf("call %d: PublicationExists = %v, %v; want %v, nil", i+1, exists, err, want)
		}
		dropped, err := DropPublication(ctx, conn, "Mixed Case")
		if err != nil || dropped != want {
			t.Errorf("call %d: DropPublication = %v, %v; want %v, nil", i+1, dropped, err, want)
		}
	}
}

func TestTeardownSQL(t *testing.T) {
	got := TeardownSQL("pg_invalidator_demo", "Mixed Case")
	want := `SELECT pg_drop_replication_slot('pg_invalidator_demo'); DROP PUBLICATION IF EXISTS "Mixed Case";`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
