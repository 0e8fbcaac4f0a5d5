package replication

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestReplicationURL(t *testing.T) {
	tests := []struct {
		dsn, want string
	}{
		{"postgres://u:pw@localhost:5432/db", "postgres://u:pw@localhost:5432/db?replication=database"},
		{"postgres://u:pw@localhost/db?sslmode=disable&application_name=x",
			"postgres://u:pw@localhost/db?sslmode=disable&application_name=x&replication=database"},
		{"postgresql://localhost/db?replication=true&sslmode=disable",
			"postgresql://localhost/db?sslmode=disable&replication=database"},
		{"postgres://localhost/db?", "postgres://localhost/db?replication=database"},
		{"postgres://h1:5432,h2:5433/db?target_session_attrs=read-write",
			"postgres://h1:5432,h2:5433/db?target_session_attrs=read-write&replication=database"},
		{"host=localhost dbname=db password='a b'", "host=localhost dbname=db password='a b' replication=database"},
		{"host=localhost replication=true", "host=localhost replication=true replication=database"},
		{"", "replication=database"},
	}
	for _, tt := range tests {
		got, err := ReplicationURL(tt.dsn)
		if err != nil || got != tt.want {
			t.Errorf("ReplicationURL(%q) = %q, %v; want %q", tt.dsn, got, err, tt.want)
			continue
		}
		cfg, err := pgconn.ParseConfig(got)
		if err != nil {
			t.Errorf("parse %q: %v", got, err)
		} else if cfg.RuntimeParams["replication"] != "database" {
			t.Errorf("parse %q: replication = %q, want database", got, cfg.RuntimeParams["replication"])
		}
	}

	_, err := ReplicationURL("postgres://u:secret@localhost/db?password=secret&x=%zz")
	want := "replication url postgres://u:REDACTED@localhost/db: invalid query string"
	if err == nil || err.Error() != want {
		t.Errorf("got error %v, want %q", err, want)
	}
}
