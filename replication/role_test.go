package replication

import (
	"context"
	"reflect"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestRoleSQL(t *testing.T) {
	t.Parallel()
	role, _ := newRole(t)
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE SCHEMA shop`,
		`CREATE TABLE shop.orders (id int PRIMARY KEY)`,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`GRANT SELECT ON items TO `+role,
	)
	conn := connect(t, db)
	ctx := context.Background()

	got, err := RoleSQL(ctx, conn, role, []string{"items", "shop.orders"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`ALTER ROLE "` + role + `" WITH LOGIN REPLICATION`,
		`GRANT USAGE ON SCHEMA "shop" TO "` + role + `"`,
		`GRANT SELECT ON TABLE "shop"."orders" TO "` + role + `"`,
	}
	if !reflect.DeepEqual(sqlOf(got), want) {
		t.Errorf("existing role: got %q\nwant %q", sqlOf(got), want)
	}

	got, err = RoleSQL(ctx, conn, "no such role", []string{"items"})
	if err != nil {
		t.Fatal(err)
	}
	want = []string{
		`CREATE ROLE "no such role" WITH LOGIN REPLICATION PASSWORD NULL`,
		`GRANT USAGE ON SCHEMA "public" TO "no such role"`,
		`GRANT SELECT ON TABLE "public"."items" TO "no such role"`,
	}
	if !reflect.DeepEqual(sqlOf(got), want) {
		t.Errorf("missing role: got %q\nwant %q", sqlOf(got), want)
	}

	if got, err := RoleSQL(ctx, conn, superuser(t), []string{"items", "shop.orders"}); err != nil || got != nil {
		t.Errorf("superuser: got %q, %v; want nothing", sqlOf(got), err)
	}
}
