package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// The chaos run's data: three rule tables, the keys their rules render, and
// the value a cache-aside reader caches for each key.
//
// Every cached value is "<payload>|<snapshot>": the payload is what the
// query returned, and the snapshot is pg_current_snapshot() of the same
// statement, so that the harness can tell, for any committed transaction,
// whether the value was read before it (the snapshot does not see its xid)
// or after. That makes "a cached value older than a transaction the slot
// has acknowledged" a question with an exact answer, on the primary and on
// the standby alike.

const (
	chaosItemRows  = 300 // chaos_items ids 1..300; row 0 is the sentinel the end's quiesce updates, which no writer touches
	chaosCats      = 10  // chaos_items.cat takes values 0..9
	chaosEventRows = 100 // chaos_events ids 1..100 in each region
	chaosPriceRows = 200 // chaos_prices ids 1..200
	chaosNoteRows  = 50  // chaos_notes ids 1..50: written, and named only by some rule sets; nobody caches them
	chaosPrefix    = "chaos:"
)

// chaosRegions are the list partitions of chaos_events.
var chaosRegions = []string{"eu", "us", "ap"}

// chaosSchema creates the tables and their first rows. chaos_items is a
// plain table whose rules use an old-row column (cat), so it needs REPLICA
// IDENTITY FULL; chaos_events is partitioned by region; chaos_prices has a
// version rule. ver and amount come from one sequence, so that every write
// gives its row a value never seen before.
func chaosSchema() []string {
	s := []string{
		`CREATE SEQUENCE chaos_ver`,
		`CREATE TABLE chaos_items (id int PRIMARY KEY, cat int NOT NULL, ver bigint NOT NULL)`,
		`ALTER TABLE chaos_items REPLICA IDENTITY FULL`,
		fmt.Sprintf(`INSERT INTO chaos_items SELECT g, g %% %d, nextval('chaos_ver') FROM generate_series(0, %d) g`, chaosCats, chaosItemRows),
		`CREATE TABLE chaos_events (region text NOT NULL, id int NOT NULL, ver bigint NOT NULL, PRIMARY KEY (region, id)) PARTITION BY LIST (region)`,
	}
	for _, r := range chaosRegions {
		s = append(s, fmt.Sprintf(`CREATE TABLE %s PARTITION OF chaos_events FOR VALUES IN ('%s')`, partitionName(r, 0), r))
	}
	s = append(s,
		fmt.Sprintf(`INSERT INTO chaos_events SELECT r, g, nextval('chaos_ver') FROM unnest(ARRAY['eu', 'us', 'ap']) r, generate_series(1, %d) g`, chaosEventRows),
		`CREATE TABLE chaos_prices (id int PRIMARY KEY, amount bigint NOT NULL)`,
		fmt.Sprintf(`INSERT INTO chaos_prices SELECT g, nextval('chaos_ver') FROM generate_series(1, %d) g`, chaosPriceRows),
		`CREATE TABLE chaos_notes (id int PRIMARY KEY, body bigint NOT NULL)`,
		`VACUUM ANALYZE`,
	)
	return s
}

// partitionName is the name of region's partition of chaos_events; each
// detach fault replaces it with the next generation.
func partitionName(region string, generation int) string {
	return fmt.Sprintf("chaos_events_%s_%d", region, generation)
}

// Keys.

func itemKey(id int) string { return chaosPrefix + "item:" + strconv.Itoa(id) }
func catKey(cat int) string { return chaosPrefix + "cat:" + strconv.Itoa(cat) }
func eventKey(region string, id int) string {
	return chaosPrefix + "event:" + region + ":" + strconv.Itoa(id)
}
func eventsKey(region string) string { return chaosPrefix + "events:" + region }
func priceVersionKey(id int) string  { return chaosPrefix + "pver:" + strconv.Itoa(id) }
func priceKey(id int, version string) string {
	return chaosPrefix + "price:" + strconv.Itoa(id) + ":v" + version
}

// The queries that compute each key's payload, each with the snapshot it
// read from. An aggregate over no rows is still a value ("0:0").
const (
	qItem   = `SELECT cat::text || ':' || ver, pg_current_snapshot()::text FROM chaos_items WHERE id = $1`
	qCat    = `SELECT count(*) || ':' || coalesce(sum(ver), 0), pg_current_snapshot()::text FROM chaos_items WHERE cat = $1`
	qEvent  = `SELECT ver::text, pg_current_snapshot()::text FROM chaos_events WHERE region = $1 AND id = $2`
	qEvents = `SELECT count(*) || ':' || coalesce(sum(ver), 0), pg_current_snapshot()::text FROM chaos_events WHERE region = $1`
	qPrice  = `SELECT amount::text, pg_current_snapshot()::text FROM chaos_prices WHERE id = $1`
)

// querier is a connection or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// loadValue runs one of the queries above and returns the value to cache,
// "<payload>|<snapshot>"; false when the row does not exist.
func loadValue(ctx context.Context, q querier, sql string, args ...any) (string, bool, error) {
	var payload, snap string
	err := q.QueryRow(ctx, sql, args...).Scan(&payload, &snap)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return payload + "|" + snap, true, nil
}

// cachedValue splits a cached value into its payload and snapshot; false
// when it is not one the harness wrote.
func cachedValue(v string) (payload string, snap snapshot, ok bool) {
	payload, s, found := strings.Cut(v, "|")
	if !found {
		return "", snapshot{}, false
	}
	snap, err := parseSnapshot(s)
	return payload, snap, err == nil
}

// snapshot is pg_current_snapshot(): transactions below xmin are finished,
// those at or above xmax had not started, and xip lists those in progress
// in between.
type snapshot struct {
	xmin, xmax uint64
	xip        []uint64
}

// parseSnapshot reads pg_snapshot's text form, "xmin:xmax:xip,xip".
func parseSnapshot(s string) (snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return snapshot{}, fmt.Errorf("snapshot %q: want xmin:xmax:xip", s)
	}
	var snap snapshot
	var err error
	if snap.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("snapshot %q: %w", s, err)
	}
	if snap.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("snapshot %q: %w", s, err)
	}
	if parts[2] != "" {
		for x := range strings.SplitSeq(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return snapshot{}, fmt.Errorf("snapshot %q: %w", s, err)
			}
			snap.xip = append(snap.xip, v)
		}
	}
	return snap, nil
}

// sees reports whether a transaction that committed with xid is visible in
// the snapshot, as pg_visible_in_snapshot says.
func (s snapshot) sees(xid uint64) bool {
	if xid < s.xmin {
		return true
	}
	if xid >= s.xmax {
		return false
	}
	return !slices.Contains(s.xip, xid)
}

// isLSN reports whether v is a version key's value as the daemon sets it,
// 16 upper-case hex digits, and returns the LSN.
func isLSN(v string) (uint64, bool) {
	if len(v) != 16 || strings.ToUpper(v) != v {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 16, 64)
	return n, err == nil
}
