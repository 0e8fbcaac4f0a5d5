package integration

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
)

// TestUnixSockets runs the binary against PostgreSQL and Redis over their
// Unix sockets (postgres://...?host=/dir and unix:///path/redis.sock), and
// checks that both connections really are Unix sockets and that an UPDATE
// still invalidates its keys.
func TestUnixSockets(t *testing.T) {
	pg := startPostgres(t)
	rds, err := localsvc.StartRedis(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rds.Close() })
	f := newFixtureOn(t, pg.URL(), rds.URL(), itemsSchema, markerSchema) // the test itself uses TCP
	rules := f.rules(itemsRules)

	u, err := url.Parse(f.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	pgUnix := strings.Replace(pg.UnixURL(), "/postgres?", u.Path+"?", 1)
	tcpRedis := f.redisURL
	f.redisURL = rds.UnixURL()
	p := f.startProcessURL(pgUnix, rules)
	f.redisURL = tcpRedis
	f.waitSlotActive("pg_invalidator", nil)

	var local bool
	if err := f.db.QueryRow(context.Background(), `SELECT r.client_addr IS NULL FROM pg_stat_replication r
		JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'pg_invalidator'`).Scan(&local); err != nil {
		t.Fatal(err)
	}
	if !local {
		t.Error("the walsender's client_addr is set: the daemon did not connect over the Unix socket")
	}

	keys := f.cacheItems(10)
	f.exec("UPDATE items SET v = v + 1 WHERE id <= 10")
	f.waitGone(keys...)
	f.sync()

	clients, err := f.rdb.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(clients, "laddr="+rds.SocketPath()) {
		t.Errorf("no Redis client on the Unix socket %s:\n%s\ndaemon stderr:\n%s", rds.SocketPath(), clients, p.stderr)
	}
}
