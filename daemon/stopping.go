package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

// serverStopping carries to the session, from the daemon's own connections
// to PostgreSQL (the heartbeat's, the visibility gate's, the standby
// gate's), the news that the server is shutting down.
//
// A fast shutdown ends every backend at once, but keeps each walsender
// until its client has confirmed, as flushed, everything it was sent. The
// daemon confirms a transaction only once every Redis target applied it and
// it is visible on the primary: with a Redis that blocks writes, or a commit
// whose visibility the stopping server no longer shows, it does not, and the
// server waited for it for good (TestFastShutdownNotHeldByTheDaemon; the
// chaos run's fast restart held until the harness shut the server down
// immediately). So the session ends when the server is found stopping, and
// what it had not confirmed, the next session receives again.
type serverStopping struct {
	c chan error // the last news the session has not taken; holds one
}

func newServerStopping() *serverStopping { return &serverStopping{c: make(chan error, 1)} }

// note passes err on to the session when it says the server is going
// away (replication.ShuttingDown).
func (s *serverStopping) note(err error) {
	if !replication.ShuttingDown(err) {
		return
	}
	select {
	case s.c <- err:
	default: // news not taken yet says the same
	}
}

// clear drops news older than the session about to start.
func (s *serverStopping) clear() {
	select {
	case <-s.c:
	default:
	}
}

// errServerStopping ends a session whose server is shutting down.
var errServerStopping = errors.New("postgresql is shutting down: ended the replication session, so that its walsender, " +
	"which a fast shutdown keeps until everything sent is confirmed, lets the shutdown finish; " +
	"what was not confirmed is sent again by the next session")

// stoppingProbeTimeout bounds the connection that checks the news.
const stoppingProbeTimeout = 2 * time.Second

// watchStopping ends the session, through cancel, once the server is found
// shutting down, until ctx ends. News of one connection is checked with a
// new one first: a backend ended by pg_terminate_backend, or a heartbeat
// connection that died with the last server and is found dead only after
// it restarted, says 57P01 too, while the server takes connections.
func (p *pipeline) watchStopping(ctx context.Context, cancel context.CancelCauseFunc) {
	for {
		var news error
		select {
		case <-ctx.Done():
			return
		case news = <-p.stopping.c:
		}
		pctx, cancelProbe := context.WithTimeout(ctx, stoppingProbeTimeout)
		conn, err := connect(pctx, p.cfg)
		cancelProbe()
		if err == nil {
			conn.Close(context.Background())
			p.log.Debug("a connection to postgresql was ended, and the server takes new ones: the session goes on", "err", news)
			continue
		}
		if ctx.Err() != nil {
			return
		}
		cancel(fmt.Errorf("%w (%v; a new connection: %v)", errServerStopping, news, err))
		return
	}
}
