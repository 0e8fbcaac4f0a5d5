package replication

import (
	"context"
	"reflect"
	"testing"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
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

func TestWithFullIdentity(t *testing.T) {
	tables := map[string]pginvalidator.TableInfo{
		"public.a": {Schema: "public", Name: "a", Exists: true, ReplicaIdentity: pginvalidator.IdentityDefault, HasPrimaryKey: true,
			Columns: []string{"id", "v", "g"}, Generated: []string{"g"}, IdentityColumns: []string{"id"}},
		"public.b": {Schema: "public", Name: "b", Exists: true, ReplicaIdentity: pginvalidator.IdentityNothing,
			Columns: []string{"id"}},
		"public.gone": {Schema: "public", Name: "gone"},
	}
	got := WithFullIdentity(tables, []string{"public.a", "public.gone"})
	wantA := tables["public.a"]
	wantA.ReplicaIdentity, wantA.IdentityColumns = pginvalidator.IdentityFull, []string{"id", "v"}
	want := map[string]pginvalidator.TableInfo{"public.a": wantA, "public.b": tables["public.b"], "public.gone": tables["public.gone"]}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
	if tables["public.a"].ReplicaIdentity != pginvalidator.IdentityDefault {
		t.Error("WithFullIdentity changed its argument")
	}
}
