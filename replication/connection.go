package replication

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/internal/redact"
)

// TextSettings are the run-time parameters pinned on every replication
// connection. pgoutput sends values as their text output, which follows the
// session settings: timestamptz follows TimeZone, dates follow DateStyle,
// bytea follows bytea_output and floats follow extra_float_digits. Pinning
// them keeps the keys built from those values stable.
var TextSettings = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO",
	"bytea_output":       "hex",
	"extra_float_digits": "3",
}

// ConnectSQL opens an ordinary (not a replication) connection to url, for
// the catalog, the publication, slot state and heartbeats. The error names
// the server with its password redacted.
func ConnectSQL(ctx context.Context, url string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres %s: %w", redact.URL(url), redact.Error(err, url))
	}
	return conn, nil
}

// ReplicationURL adds replication=database to a postgres:// or postgresql://
// URL or to a libpq keyword/value string, replacing any replication setting
// already there, so that pgconn.Connect opens a logical replication
// connection.
func ReplicationURL(dsn string) (string, error) {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		// In keyword/value form the last setting of a keyword wins.
		if strings.TrimSpace(dsn) == "" {
			return "replication=database", nil
		}
		return dsn + " replication=database", nil
	}
	// Edit the query string by hand: url.Parse rejects multi-host URLs
	// (postgres://h1,h2/db), which pgconn accepts.
	base, query, _ := strings.Cut(dsn, "?")
	if _, err := url.ParseQuery(query); err != nil {
		// The query may hold a password= parameter: leave it out.
		return "", fmt.Errorf("replication url %s: invalid query string", redact.URL(base))
	}
	var params []string
	for p := range strings.SplitSeq(query, "&") {
		if p == "" {
			continue
		}
		k, _, _ := strings.Cut(p, "=")
		if k, _ := url.QueryUnescape(k); k == "replication" {
			continue
		}
		params = append(params, p)
	}
	params = append(params, "replication=database")
	return base + "?" + strings.Join(params, "&"), nil
}
