package replication

import (
	"context"
	"reflect"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestReplicaIdentityFullSQL(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE TABLE plain (id int PRIMARY KEY, a int)`,
		`CREATE TABLE "Full" (id int PRIMARY KEY, a int)`,
		`ALTER TABLE "Full" REPLICA IDENTITY FULL`,
		`CREATE TABLE parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`,
		`CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu')`,
		`CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us')`,
		`ALTER TABLE parted_us REPLICA IDENTITY FULL`,
	)
	conn := connect(t, db)
	got, err := ReplicaIdentityFullSQL(context.Background(), conn,
		[]string{"plain", "public.Full", "parted", "public.parted_eu", "nosuch"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Statement{
		{SQL: `ALTER TABLE "public"."plain" REPLICA IDENTITY FULL`},
		{SQL: `ALTER TABLE "public"."parted_eu" REPLICA IDENTITY FULL`, Why: "a leaf partition of public.parted"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}
