package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestPredicates(t *testing.T) {
	pgErr := func(code, msg, detail string) error {
		// Wrapped, as the daemon sees them.
		return fmt.Errorf("start replication on slot s: %w", &pgconn.PgError{Code: code, Message: msg, Detail: detail})
	}
	tests := []struct {
		name                                     string
		err                                      error
		invalidated, active, permanent, stopping bool
	}{
		{"invalidated slot", pgErr("55000", `can no longer get changes from replication slot "s"`,
			"This slot has been invalidated because it exceeded the maximum reserved size."), true, false, true, false},
		{"wal_level too low", pgErr("55000", "logical decoding requires wal_level >= logical", ""), false, false, true, false},
		{"slot held by another walsender", pgErr("55006", `replication slot "s" is active for PID 42`, ""), false, true, false, false},
		{"bad password", pgErr("28P01", "password authentication failed for user \"u\"", ""), false, false, true, false},
		{"no privilege", pgErr("42501", "permission denied for table items", ""), false, false, true, false},
		{"no database", pgErr("3D000", `database "nope" does not exist`, ""), false, false, true, false},
		{"too many connections", pgErr("53300", "sorry, too many clients already", ""), false, false, false, false},
		{"server shutting down", pgErr("57P01", "terminating connection due to administrator command", ""), false, false, false, true},
		{"connection refused while shutting down", pgErr("57P03", "the database system is shutting down", ""), false, false, false, true},
		{"another backend crashed", pgErr("57P02", "terminating connection because of crash of another server process", ""), false, false, false, true},
		{"network", errors.New("read tcp: connection reset by peer"), false, false, false, false},
		{"canceled", context.Canceled, false, false, false, false},
		{"nil", nil, false, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SlotInvalidated(tt.err); got != tt.invalidated {
				t.Errorf("SlotInvalidated = %v, want %v", got, tt.invalidated)
			}
			if got := SlotActive(tt.err); got != tt.active {
				t.Errorf("SlotActive = %v, want %v", got, tt.active)
			}
			if got := Permanent(tt.err); got != tt.permanent {
				t.Errorf("Permanent = %v, want %v", got, tt.permanent)
			}
			if got := ShuttingDown(tt.err); got != tt.stopping {
				t.Errorf("ShuttingDown = %v, want %v", got, tt.stopping)
			}
		})
	}
}

func TestInvalidatedErrorUnwraps(t *testing.T) {
	cause := &pgconn.PgError{Severity: "ERROR", Code: "55000", Message: "can no longer get changes", Detail: "This slot has been invalidated because it exceeded the maximum reserved size."}
	err := invalidatedError("s", cause)
	var slotErr *SlotError
	if !errors.As(err, &slotErr) || !SlotInvalidated(err) {
		t.Errorf("invalidatedError is not a *SlotError that SlotInvalidated recognises: %#v", err)
	}
	want := "start replication on slot s: ERROR: can no longer get changes (SQLSTATE 55000)\n" +
		"replication slot s has been invalidated (This slot has been invalidated because it exceeded the maximum reserved size): changes were lost and caches may be stale; " +
		"drop it with SELECT pg_drop_replication_slot('s'), flush the affected keys, and restart"
	if err.Error() != want {
		t.Errorf("got\n%s\nwant\n%s", err, want)
	}
}

func TestNotWritten(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"the server refused it", fmt.Errorf("emit canary: %w", &pgconn.PgError{Code: "57014", Message: "canceling statement due to statement timeout"}), true},
		{"a timeout while it was out", fmt.Errorf("emit canary: %w", context.DeadlineExceeded), false},
		{"a connection lost while it was out", fmt.Errorf("emit canary: %w", io.ErrUnexpectedEOF), false},
	}
	for _, tt := range tests {
		if got := NotWritten(tt.err); got != tt.want {
			t.Errorf("%s: NotWritten(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}
