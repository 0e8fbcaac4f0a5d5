package daemon

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// canarySetTimeout bounds the canary's SET on every target: a Redis that
// blocks writes delays the heartbeat no longer.
const canarySetTimeout = 5 * time.Second

// heartbeat emits a heartbeat every cfg.Heartbeat until ctx ends, on a
// connection of its own. The walsender answers it with a keepalive, which
// lets an idle daemon acknowledge the position: the slot moves, and releases
// WAL, even on a database whose published tables are quiet and whose
// keepalives would otherwise stop coming.
//
// While a session streams with messages, each heartbeat carries the canary
// c (nil: none), and one goes out as soon as a session starts streaming:
// the canary's key is set on every target of ts, then a canary message is
// written (replication.EmitCanary), which the pipeline answers by deleting
// the key. Otherwise it is a plain heartbeat (replication.EmitHeartbeat).
//
// Failures are logged once per streak and never stop the daemon; each is
// told to stopping, which ends the session when it says the server is
// shutting down. A canary
// whose key could not be set still goes: the deletion is what proves the
// path. A canary whose message failed stays out unless it was certainly not
// written (replication.NotWritten): one that timed out on a silent server
// may still come back, and until one does, /readyz says so.
func heartbeat(ctx context.Context, cfg Config, c *canary, ts fanout, stopping *serverStopping) {
	t := time.NewTicker(cfg.Heartbeat)
	defer t.Stop()
	var kick <-chan struct{}
	if c != nil {
		kick = c.kick
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	failing, setFailing := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		var setErr error
		err := func() error {
			// A server gone silent must not hold the heartbeat forever.
			ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			defer cancel()
			if conn == nil || conn.IsClosed() {
				nc, err := connectPrimary(ctx, cfg) // a standby cannot write the message
				if err != nil {
					return err
				}
				if err := replication.PrepareHeartbeatConn(ctx, nc); err != nil {
					nc.Close(context.Background())
					return err
				}
				conn = nc
			}
			now := time.Now()
			token, ok := "", false
			if c != nil {
				token, ok = c.next(now)
			}
			if !ok {
				return replication.EmitHeartbeat(ctx, conn)
			}
			sctx, cancel := context.WithTimeout(ctx, canarySetTimeout)
			setErr = ts.SetCanary(sctx, c.key, now.UTC().Format(time.RFC3339Nano))
			cancel()
			if err := replication.EmitCanary(ctx, conn, cfg.Slot, token); err != nil {
				if replication.NotWritten(err) {
					c.forget(token)
				} // else it may still come back: it stays out, and /readyz sees it
				return err
			}
			return nil
		}()
		if ctx.Err() != nil {
			return
		}
		switch {
		case setErr != nil && !setFailing:
			cfg.Logger.Warn("canary key not set; the canary goes on, its deletion still proves the path", "key", c.key, "err", setErr)
			setFailing = true
		case setErr == nil && setFailing && err == nil:
			cfg.Logger.Info("canary key set again", "key", c.key)
			setFailing = false
		}
		if err != nil {
			stopping.note(err)
		}
		if err != nil && conn != nil { // a new connection next time
			conn.Close(context.Background())
			conn = nil
		}
		switch {
		case err != nil && !failing:
			cfg.Logger.Warn("heartbeat failed; the slot may move only when published tables change", "err", err)
			failing = true
		case err == nil && failing:
			cfg.Logger.Info("heartbeat recovered")
			failing = false
		}
	}
}
