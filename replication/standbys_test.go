package replication

import (
	"context"
	"reflect"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// TestStandbyRole checks what [postgres] replicas needs of the role: to see
// pg_stat_replication's replay_lsn, as pg_monitor grants.
func TestStandbyRole(t *testing.T) {
	t.Parallel()
	role, asRole := newRole(t)
	db := testenv.NewDatabase(t, env.PostgresURL)
	ctx := context.Background()
	admin := connect(t, db)

	got, err := StandbyRoleSQL(ctx, admin, role)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{`GRANT pg_monitor TO "` + role + `"`}; !reflect.DeepEqual(sqlOf(got), want) {
		t.Errorf("StandbyRoleSQL = %q, want %q", sqlOf(got), want)
	}
	problem, err := StandbyRoleProblem(ctx, connect(t, asRole(db)))
	if err != nil {
		t.Fatal(err)
	}
	want := "role " + role + ` may not see the standbys' replay_lsn in pg_stat_replication, which [postgres] replicas needs; fix: as a superuser, run GRANT pg_monitor TO "` + role + `"; or remove replicas`
	if problem == nil || problem.Error() != want {
		t.Errorf("StandbyRoleProblem = %v, want %s", problem, want)
	}

	testenv.Exec(t, db, `GRANT pg_monitor TO "`+role+`"`)
	if got, err := StandbyRoleSQL(ctx, admin, role); err != nil || got != nil {
		t.Errorf("after GRANT pg_monitor: StandbyRoleSQL = %q, %v; want nothing", sqlOf(got), err)
	}
	if problem, err := StandbyRoleProblem(ctx, connect(t, asRole(db))); err != nil || problem != nil {
		t.Errorf("after GRANT pg_monitor: StandbyRoleProblem = %v, %v; want nil", problem, err)
	}
	if got, err := StandbyRoleSQL(ctx, admin, superuser(t)); err != nil || got != nil {
		t.Errorf("superuser: got %q, %v; want nothing", sqlOf(got), err)
	}
}
