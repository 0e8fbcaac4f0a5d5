package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
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

// TestRetryLogsAStreak: the first failure of a streak is a warning, the
// same error again is logged at debug level, a different error and a streak
// that goes on past stillFailingEvery are warnings again, and the recovery
// is logged.
func TestRetryLogsAStreak(t *testing.T) {
	defer func(d time.Duration) { stillFailingEvery = d }(stillFailingEvery)
	stillFailingEvery = 150 * time.Millisecond
	var buf bytes.Buffer
	cfg := Config{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), MaxBackoff: 20 * time.Millisecond}
	refused := errors.New("dial tcp 127.0.0.1:5432: connect: connection refused")
	reset := errors.New("read tcp: connection reset by peer")
	silent := func(ms int) error {
		return fmt.Errorf("replication connection silent: nothing received for 30.%03ds", ms)
	}
	errs := []error{refused, refused, refused, silent(12), silent(4), reset, reset}
	start := time.Now()
	n := 0
	err := retry(context.Background(), cfg, "stream", func() error {
		switch {
		case n < len(errs):
			n++
			return errs[n-1]
		case time.Since(start) < 400*time.Millisecond: // past stillFailingEvery since the last warning
			return reset
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	for _, want := range []string{`level=WARN msg="stream failed, retrying with backoff"`, `level=WARN msg="stream failed again, differently"`,
		`level=WARN msg="stream still failing"`, `level=INFO msg="stream recovered"`} {
		if !strings.Contains(text, want) {
			t.Errorf("the log has no %s:\n%s", want, text)
		}
	}
	if c := strings.Count(text, `level=WARN msg="stream failed, retrying with backoff"`); c != 1 {
		t.Errorf("%d first-failure warnings, want 1:\n%s", c, text)
	}
	if c := strings.Count(text, `level=WARN msg="stream failed again, differently"`); c != 2 {
		t.Errorf("%d warnings of a changed error, want 2 (the error changed twice; the silences differ only in a number):\n%s", c, text)
	}
	if !strings.Contains(text, `level=DEBUG msg="stream failed again"`) {
		t.Errorf("the same error again was not logged at debug level:\n%s", text)
	}
}
