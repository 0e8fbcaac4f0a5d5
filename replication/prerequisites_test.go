package replication

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestServerProblems(t *testing.T) {
	ok := Server{Version: "15.4", VersionNum: 150004, WALLevel: "logical", MaxSlots: 10, Slots: []string{"a"},
		MaxWALSenders: 10, WALSenders: 1}
	with := func(f func(s *Server)) Server {
		s := ok
		f(&s)
		return s
	}
	const restart = "then restart PostgreSQL (a reload is not enough)"
	walLevel := "wal_level is replica, but logical decoding needs logical; fix: as a superuser, run ALTER SYSTEM SET wal_level = logical; " +
		restart + ". A managed service takes its own parameter instead, then a reboot: rds.logical_replication = 1 on Amazon RDS and Aurora, " +
		"cloudsql.logical_decoding = on on Google Cloud SQL, wal_level = logical as a server parameter on Azure flexible server " +
		"(azure.replication_support = logical on the retired single server)"
	tests := []struct {
		name string
		s    Server
		want []string
	}{
		{"all fine", ok, nil},
		{"newest tested", with(func(s *Server) { s.VersionNum = 160000 }), nil},
		{"oldest supported", with(func(s *Server) { s.VersionNum = 130000 }), nil},
		{"too old", Server{Version: "12.17", VersionNum: 120017}, []string{
			"PostgreSQL 12.17 is not supported: pg-invalidator needs PostgreSQL 13 or later (for publish_via_partition_root and pg_replication_slots.wal_status); " +
				"fix: upgrade the server to PostgreSQL 13 or later (15, 17 and 18 are tested)"}},
		{"wal_level replica", with(func(s *Server) { s.WALLevel = "replica" }), []string{walLevel}},
		{"wal_level replica on Amazon RDS", with(func(s *Server) { s.WALLevel, s.Managed = "replica", "Amazon RDS or Aurora" }), []string{
			"wal_level is replica, but logical decoding needs logical; fix: this is Amazon RDS or Aurora: set rds.logical_replication = 1 " +
				"in the DB parameter group (on Aurora, the DB cluster parameter group), then reboot"}},
		{"wal_level replica on Cloud SQL", with(func(s *Server) { s.WALLevel, s.Managed = "replica", "Google Cloud SQL" }), []string{
			"wal_level is replica, but logical decoding needs logical; fix: this is Google Cloud SQL: set the database flag cloudsql.logical_decoding = on, then restart"}},
		{"wal_level replica on Azure", with(func(s *Server) { s.WALLevel, s.Managed = "replica", "Azure Database for PostgreSQL flexible server" }), []string{
			"wal_level is replica, but logical decoding needs logical; fix: this is Azure Database for PostgreSQL flexible server: " +
				"set the server parameter wal_level = logical, then restart"}},
		{"slots used up", with(func(s *Server) { s.MaxSlots, s.Slots = 2, []string{"a", "b"} }), []string{
			"no free replication slot: max_replication_slots is 2 and 2 slots are in use (a, b); fix: drop a slot nobody uses with " +
				"SELECT pg_drop_replication_slot('name'), or raise the limit with ALTER SYSTEM SET max_replication_slots = 3; " + restart}},
		{"many slots", with(func(s *Server) { s.MaxSlots, s.Slots = 6, []string{"a", "b", "c", "d", "e", "f"} }), []string{
			"no free replication slot: max_replication_slots is 6 and 6 slots are in use (a, b, c, d, e and 1 more); fix: drop a slot nobody uses with " +
				"SELECT pg_drop_replication_slot('name'), or raise the limit with ALTER SYSTEM SET max_replication_slots = 7; " + restart}},
		{"no slots at all", with(func(s *Server) { s.MaxSlots, s.Slots = 0, nil }), []string{
			"no free replication slot: max_replication_slots is 0; fix: raise the limit with ALTER SYSTEM SET max_replication_slots = 1; " + restart}},
		{"the daemon's own slot fills the last place", with(func(s *Server) { s.MaxSlots, s.Slots, s.SlotExists = 1, []string{"pg_invalidator"}, true }), nil},
		{"WAL senders used up", with(func(s *Server) { s.MaxWALSenders, s.WALSenders = 3, 3 }), []string{
			"no free WAL sender: max_wal_senders is 3 and 3 are in use by other replication connections (standbys, subscribers, other consumers); " +
				"fix: raise the limit with ALTER SYSTEM SET max_wal_senders = 4; " + restart +
				"; or end a replication connection nobody needs (pg_stat_replication lists them)"}},
		{"no WAL senders at all", with(func(s *Server) { s.MaxWALSenders, s.WALSenders = 0, 0 }), []string{
			"no free WAL sender: max_wal_senders is 0; fix: raise the limit with ALTER SYSTEM SET max_wal_senders = 1; " + restart}},
		{"everything at once", with(func(s *Server) { s.WALLevel, s.MaxSlots, s.MaxWALSenders, s.WALSenders = "minimal", 1, 0, 0 }), []string{
			strings.Replace(walLevel, "is replica", "is minimal", 1),
			"no free replication slot: max_replication_slots is 1 and 1 slot is in use (a); fix: drop a slot nobody uses with " +
				"SELECT pg_drop_replication_slot('name'), or raise the limit with ALTER SYSTEM SET max_replication_slots = 2; " + restart,
			"no free WAL sender: max_wal_senders is 0; fix: raise the limit with ALTER SYSTEM SET max_wal_senders = 1; " + restart}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, p := range serverProblems(tt.s) {
				got = append(got, p.Error())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestServerProblemsLive reads a real server, the test server, which has
// every prerequisite.
func TestServerProblemsLive(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	conn := connect(t, db)
	ctx := context.Background()
	slot := testenv.UniqueName()
	testenv.Exec(t, db, `SELECT pg_create_logical_replication_slot('`+slot+`', 'pgoutput')`)

	s, problems, err := ServerProblems(ctx, conn, slot)
	if err != nil || problems != nil {
		t.Fatalf("got %v, %v; want no problem", problems, err)
	}
	if s.VersionNum < MinServerVersion || s.WALLevel != "logical" || !s.SlotExists || !slices.Contains(s.Slots, slot) ||
		s.MaxSlots == 0 || s.MaxWALSenders == 0 {
		t.Errorf("read %+v", s)
	}
	if !strings.HasPrefix(s.String(), "PostgreSQL "+s.Version+", wal_level logical, ") {
		t.Errorf("String() = %q", s)
	}
	s, _, err = ServerProblems(ctx, conn, "")
	if err != nil || s.SlotExists {
		t.Errorf("no slot of its own: got SlotExists %v, %v", s.SlotExists, err)
	}
}

func TestRoleProblems(t *testing.T) {
	t.Parallel()
	role, asRole := newRole(t)
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db,
		`CREATE SCHEMA shop`,
		`CREATE TABLE shop.orders (id int PRIMARY KEY)`,
		`CREATE TABLE items (id int PRIMARY KEY)`,
		`CREATE TABLE other (id int PRIMARY KEY)`,
		`GRANT SELECT ON items TO `+role,
	)
	ctx := context.Background()
	names := []string{"items", "other", "shop.orders", "nosuch"}

	problems, err := RoleProblems(ctx, connect(t, asRole(db)), names)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.Error())
	}
	want := []string{
		"role " + role + " has neither the REPLICATION attribute nor superuser, so it may not stream changes; " +
			`fix: as a superuser, run ALTER ROLE "` + role + `" WITH LOGIN REPLICATION; (pg-invalidator setup prints every statement the role needs)`,
		"role " + role + " lacks USAGE on schema shop, which holds rule tables; " +
			`fix: as the schema's owner or a superuser, run GRANT USAGE ON SCHEMA "shop" TO "` + role + `";`,
		"role " + role + " may not read rule table public.other, shop.orders (it lacks SELECT); " +
			`fix: as the tables' owner or a superuser, run GRANT SELECT ON TABLE "public"."other", "shop"."orders" TO "` + role + `";`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	testenv.Exec(t, db, `ALTER ROLE `+role+` REPLICATION`, `GRANT USAGE ON SCHEMA shop TO `+role, `GRANT SELECT ON ALL TABLES IN SCHEMA public, shop TO `+role)
	if problems, err := RoleProblems(ctx, connect(t, asRole(db)), names); err != nil || problems != nil {
		t.Errorf("after the grants: got %v, %v; want none", problems, err)
	}
	if problems, err := RoleProblems(ctx, connect(t, db), names); err != nil || problems != nil {
		t.Errorf("superuser: got %v, %v; want none", problems, err)
	}
}
