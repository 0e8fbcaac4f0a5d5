package daemon

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// fatalError marks an error that retrying cannot fix.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

func fatal(err error) error { return &fatalError{err: err} }

// retryable decides, in one place, which errors the daemon waits out and
// which stop it. Anything that smells of a network, a restarting server or a
// busy slot is retried; rule, schema, publication, privilege and
// authentication problems, a server or role that lacks a prerequisite
// (wal_level, a free slot or WAL sender, REPLICATION, the version), and a
// lost or unusable slot, are not.
//
// A timeout is retried too: a connect_timeout, a dial that a vanished host
// never answers, a query cut short by its own deadline all end in
// context.DeadlineExceeded. Only the daemon's own context ending stops it,
// and retry checks that context itself.
func retryable(err error) bool {
	var cfgErr *ConfigError
	var fe *fatalError
	var slotErr *replication.SlotError
	var pubErr *replication.PublicationError
	var preErr *replication.PrerequisiteError
	switch {
	case errors.As(err, &cfgErr), errors.As(err, &fe), errors.As(err, &slotErr), errors.As(err, &pubErr), errors.As(err, &preErr):
		return false
	case replication.SlotActive(err): // a standby waits for the active daemon's slot
		return true
	}
	return !replication.Permanent(err)
}

// slotBusyDelay is the pause between attempts to take a replication slot that
// another process streams from. It does not grow: a standby daemon must take
// over within a second or two of the active one dying, however long it has
// been waiting.
const slotBusyDelay = time.Second

// stillFailingEvery is how often a streak of failures is logged again at
// warning level while its error stays the same: an operator who looks at
// the log an hour into an outage finds it there, not only its first line.
var stillFailingEvery = 5 * time.Minute

// retry runs fn until it succeeds, fails with an error retrying cannot fix,
// or ctx ends. It logs the first failure of a streak and the recovery, not
// every attempt: a failure again is logged at debug level, unless its error
// differs from the last one logged (a server that now refuses the password,
// say), or the streak has gone on for stillFailingEvery since, which are
// logged as warnings. A run of fn that lasted longer than a minute resets the
// backoff: the failure is new, not part of the old streak. A slot held by
// another process is retried every slotBusyDelay (capped by MaxBackoff)
// instead of with a growing backoff, so that a standby takes over promptly.
func retry(ctx context.Context, cfg Config, step string, fn func() error) error {
	delay := 100 * time.Millisecond
	failing := false
	var (
		since, warned time.Time // when the streak began, when it was last logged as a warning
		warnedErr     string    // the error then, as errShape gives it
		attempts      int       // in the streak
	)
	for {
		start := time.Now()
		err := fn()
		if err == nil {
			if failing {
				cfg.Logger.Info(step + " recovered")
			}
			return nil
		}
		if !retryable(err) || ctx.Err() != nil {
			return err
		}
		if time.Since(start) > time.Minute {
			delay, failing = 100*time.Millisecond, false
		}
		now := time.Now()
		if !failing {
			since, attempts = now, 0
		}
		attempts++
		busy := replication.SlotActive(err)
		wait := delay
		if busy {
			wait = min(slotBusyDelay, cfg.MaxBackoff)
		}
		switch {
		case busy && !failing:
			cfg.Logger.Info("replication slot is in use by another process, standing by", "slot", cfg.Slot, "err", err)
		case busy: // a standby: waiting is its job
			cfg.Logger.Debug(step+" failed again", "err", err, "retry_in", wait)
		case !failing:
			cfg.Logger.Warn(step+" failed, retrying with backoff", "err", err)
			warned, warnedErr = now, errShape(err)
		case errShape(err) != warnedErr:
			cfg.Logger.Warn(step+" failed again, differently", "err", err, "failing_for", now.Sub(since).Round(time.Second).String(),
				"attempts", attempts)
			warned, warnedErr = now, errShape(err)
		case now.Sub(warned) >= stillFailingEvery:
			cfg.Logger.Warn(step+" still failing", "err", err, "failing_for", now.Sub(since).Round(time.Second).String(),
				"attempts", attempts)
			warned = now
		default:
			cfg.Logger.Debug(step+" failed again", "err", err, "retry_in", wait)
		}
		failing = true
		// Full jitter keeps a fleet of daemons from reconnecting in step.
		sleep := time.Duration(rand.Int64N(int64(wait))) + wait/2
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(sleep):
		}
		if !busy {
			delay = min(delay*2, cfg.MaxBackoff)
		}
	}
}

// errShape is err's text without its digits: two failures that differ only
// in a duration, a port, a position or a process ID (a silent server
// "for 30.012s", then "for 30.004s") are the same failure to the log.
func errShape(err error) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, err.Error())
}
