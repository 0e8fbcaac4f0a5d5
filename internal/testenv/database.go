package testenv

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var seq atomic.Int64

// UniqueName returns a short name, unique within this test process, that is a
// valid SQL identifier and Redis key prefix: "t<pid>_<n>".
func UniqueName() string {
	return fmt.Sprintf("t%d_%d", pidSuffix, seq.Add(1))
}

var pidSuffix = time.Now().UnixNano() % 100000

// NewDatabase creates an empty database for one test and returns its URL. The
// database is dropped, with any replication slots in it, when the test ends.
// Separate databases keep each test's tables, publication and slot apart.
func NewDatabase(tb testing.TB, serverURL string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := UniqueName()
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		tb.Fatalf("connect to %s: %v", Redact(serverURL), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("create database %s: %v", name, err)
	}
	tb.Cleanup(func() { dropDatabase(serverURL, name) })
	u, err := url.Parse(serverURL)
	if err != nil {
		tb.Fatalf("parse %s: %v", Redact(serverURL), err)
	}
	u.Path = "/" + name
	return u.String()
}

func dropDatabase(serverURL, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	// Slots pin WAL and block DROP DATABASE; end their walsenders first.
	conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
	for i := 0; i < 50; i++ {
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, name)
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
}

// Exec runs SQL statements on url, failing the test on the first error.
func Exec(tb testing.TB, dbURL string, stmts ...string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		tb.Fatalf("connect to %s: %v", Redact(dbURL), err)
	}
	defer conn.Close(ctx)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			tb.Fatalf("exec %q: %v", s, err)
		}
	}
}

// Redact hides the password in a URL.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return strings.Replace(u.String(), "xxxxx", "REDACTED", 1)
}
