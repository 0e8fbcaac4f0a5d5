package replication

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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

// DefaultTimeout is how long a connection to PostgreSQL may stay silent when
// no timeout is given: the counterpart of the server's wal_receiver_timeout.
const DefaultTimeout = 30 * time.Second

// ConnectSQL opens an ordinary (not a replication) connection to url, for
// the catalog, the publication, slot state and heartbeats, with TCP
// keepalives and a connect timeout set from timeout (see SetTimeouts; zero
// means DefaultTimeout). The error names the server with its password
// redacted.
func ConnectSQL(ctx context.Context, url string, timeout time.Duration) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url %s: %w", redact.URL(url), redact.Error(err, url))
	}
	if err := SetTimeouts(&cfg.Config, timeout); err != nil {
		return nil, fmt.Errorf("postgres url %s: %w", redact.URL(url), err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres %s: %w", redact.URL(url), redact.Error(err, url))
	}
	return conn, nil
}

// keepaliveParams are libpq's TCP keepalive parameters. pgconn does not know
// them: it would send them to the server as run-time parameters, which the
// server refuses.
var keepaliveParams = []string{"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"}

// SetTimeouts makes the connections cfg dials notice a silent peer, so that
// a server whose host vanished without closing the connection (power lost, a
// NAT entry dropped, a virtual IP moved) is not waited for forever:
//
//   - TCP keepalives, as libpq's keepalives, keepalives_idle,
//     keepalives_interval and keepalives_count parameters in the URL say (in
//     seconds; keepalives=0 turns them off). What the URL leaves out is
//     derived from timeout, so that the kernel gives up on a silent peer
//     after about timeout: the first probe after timeout/2 of silence, then
//     one every timeout/6, and three unanswered probes end the connection.
//   - A connect timeout of timeout, unless the URL gives connect_timeout.
//
// timeout zero means DefaultTimeout. The keepalive parameters are taken out
// of cfg.RuntimeParams. Only an invalid keepalive value is an error.
func SetTimeouts(cfg *pgconn.Config, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ka := net.KeepAliveConfig{
		Enable:   true,
		Idle:     max(timeout/2, time.Second),
		Interval: max(timeout/6, time.Second),
		Count:    3,
	}
	for _, k := range keepaliveParams {
		v, ok := cfg.RuntimeParams[k]
		if !ok {
			continue
		}
		delete(cfg.RuntimeParams, k)
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || (n == 0 && k != "keepalives") {
			return fmt.Errorf("%s %q: want a whole number of seconds, 1 or more (keepalives: 0 or 1)", k, v)
		}
		switch k {
		case "keepalives":
			ka.Enable = n != 0
		case "keepalives_idle":
			ka.Idle = time.Duration(n) * time.Second
		case "keepalives_interval":
			ka.Interval = time.Duration(n) * time.Second
		case "keepalives_count":
			ka.Count = n
		}
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = timeout
	}
	dialer := &net.Dialer{KeepAliveConfig: ka, Timeout: cfg.ConnectTimeout}
	if !ka.Enable {
		dialer.KeepAlive = -1 // off; zero would mean Go's default probes
	}
	cfg.DialFunc = dialer.DialContext
	return nil
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
