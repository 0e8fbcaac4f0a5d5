package replication

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

// TestQuietServerIsNotSilent streams from an idle database, where the
// server has nothing to send, with a timeout far below the status interval:
// the status update that asks for a reply at half the timeout must keep the
// stream alive. Without it, the stream would give up on a healthy server.
func TestQuietServerIsNotSilent(t *testing.T) {
	t.Parallel()
	db := testenv.NewDatabase(t, env.PostgresURL)
	testenv.Exec(t, db, `CREATE TABLE a (id int PRIMARY KEY)`, `CREATE PUBLICATION p FOR TABLE a`)
	ctx := context.Background()
	s := openStream(ctx, t, Config{URL: db, Publication: "p", StatusInterval: time.Minute, Timeout: time.Second})
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	events := make(chan []Event, 100)
	go func() {
		for range events { // drain
		}
	}()
	err := s.Run(rctx, events)
	close(events)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run on a quiet server with a 1s timeout = %v, want it to run until its context ended", err)
	}
}
