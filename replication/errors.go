package replication

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// The SQLSTATE codes this package interprets.
const (
	codeDuplicateObject    = "42710" // a slot or publication of that name exists
	codeInsufficientPriv   = "42501" // insufficient_privilege
	codeObjectInUse        = "55006" // a walsender holds the slot
	codeNotInPrerequisites = "55000" // object_not_in_prerequisite_state
	codeAdminShutdown      = "57P01" // admin_shutdown: a backend ended by a fast or smart shutdown, or by pg_terminate_backend
	codeCrashShutdown      = "57P02" // crash_shutdown: a backend ended because another crashed
	codeCannotConnectNow   = "57P03" // cannot_connect_now: the database system is shutting down, or starting up
)

// sqlState returns the SQLSTATE of a server error, or "".
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// SlotInvalidated reports whether err is the server refusing a replication
// slot it has invalidated: SQLSTATE 55000 object_not_in_prerequisite_state
// with "This slot has been invalidated because ..." in the detail, as
// START_REPLICATION answers once the slot fell behind
// max_slot_wal_keep_size. The same code also means other things (a slot of
// another database, wal_level too low), so the text is checked too.
func SlotInvalidated(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == codeNotInPrerequisites &&
		strings.Contains(pgErr.Message+" "+pgErr.Detail, "invalidated")
}

// SlotActive reports whether err is the server refusing a replication slot
// because another walsender streams from it: SQLSTATE 55006 object_in_use,
// "replication slot … is active for PID …". It is what a standby sees while
// the active daemon holds the slot.
func SlotActive(err error) bool { return sqlState(err) == codeObjectInUse }

// ShuttingDown reports whether err says the server is going away: a
// backend ended by a shutdown (SQLSTATE 57P01 admin_shutdown, which
// pg_terminate_backend also sends, and 57P02 crash_shutdown), or a new
// connection refused while the server shuts down or starts (57P03
// cannot_connect_now).
func ShuttingDown(err error) bool {
	switch sqlState(err) {
	case codeAdminShutdown, codeCrashShutdown, codeCannotConnectNow:
		return true
	}
	return false
}

// Permanent reports whether err is a refusal from the server that the same
// request will meet again until someone changes the server, the role or the
// database: a failed authentication (SQLSTATE class 28), a statement or
// privilege the server rejects (class 42), a database that does not exist
// (3D000), or an object that is not in the state the request needs
// (55000: an invalidated slot, wal_level below logical). Network errors, a
// server shutting down or starting, and a busy slot are not permanent.
func Permanent(err error) bool {
	code := sqlState(err)
	if len(code) != 5 {
		return false
	}
	switch code[:2] {
	case "28", "42", "3D":
		return true
	}
	return code == codeNotInPrerequisites
}

// NotWritten reports whether err, from EmitHeartbeat or EmitCanary, says
// that the message was certainly not written: the statement was never sent
// (pgconn.SafeToRetry), or the server answered it with an error, which
// rolled it back. Otherwise, after a timeout or a connection lost while the
// statement was out, it may have been written, and may still be decoded.
func NotWritten(err error) bool {
	var pgErr *pgconn.PgError
	return pgconn.SafeToRetry(err) || errors.As(err, &pgErr)
}
