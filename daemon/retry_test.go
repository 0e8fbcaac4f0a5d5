package daemon

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

func TestRetryable(t *testing.T) {
	pgErr := func(code string) error {
		return fmt.Errorf("start replication on slot s: %w", &pgconn.PgError{Code: code, Message: "m"})
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"network", errors.New("dial tcp 127.0.0.1:5432: connect: connection refused"), true},
		{"server shutting down", pgErr("57P01"), true},
		{"too many connections", pgErr("53300"), true},
		{"slot held by another daemon", pgErr("55006"), true},
		{"resynced", errResynced, true},
		{"bad password", pgErr("28P01"), false},
		{"permission denied", pgErr("42501"), false},
		{"no database", pgErr("3D000"), false},
		{"wal_level too low", pgErr("55000"), false},
		{"rules and schema", &ConfigError{Problems: []error{errors.New("rules.toml:2: ...")}}, false},
		{"a prerequisite", fmt.Errorf("check: %w", &replication.PrerequisiteError{Msg: "wal_level is replica", Fix: "..."}), false},
		{"unusable slot", &replication.SlotError{Slot: "s", Msg: "replication slot s uses plugin test_decoding"}, false},
		{"publication", &replication.PublicationError{Publication: "p", Fix: []string{"..."}}, false},
		{"lost slot", slotLost("s", "disappeared"), false},
		{"silent server", &replication.SilenceError{Waited: time.Minute, Timeout: time.Minute}, true},
		{"canceled", fmt.Errorf("apply batch: %w", context.Canceled), true},
		{"connect timeout", fmt.Errorf("connect to postgres: failed to receive message: timeout: %w", context.DeadlineExceeded), true},
	}
	for _, tt := range tests {
		if got := retryable(tt.err); got != tt.want {
			t.Errorf("%s: retryable(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}
