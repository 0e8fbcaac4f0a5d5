package daemon

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
	"github.com/pg-invalidator/pg-invalidator/invalidator"
	"github.com/pg-invalidator/pg-invalidator/mapping"
	"github.com/pg-invalidator/pg-invalidator/replication"
)

// ownGoroutines returns the stack of every goroutine that runs, or was
// started by, code of the packages Run drives (test files aside).
func ownGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var own []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		lines := strings.Split(g, "\n")
		for i := 1; i+1 < len(lines); i++ {
			fn, file := strings.TrimPrefix(lines[i], "created by "), lines[i+1]
			if strings.HasPrefix(fn, "\t") || !strings.HasPrefix(file, "\t") || strings.Contains(file, "_test.go:") {
				continue
			}
			if ownFunc(fn) {
				own = append(own, g)
				break
			}
		}
	}
	return own
}

func ownFunc(fn string) bool {
	for _, pkg := range []string{"daemon", "replication", "invalidator", "mapping"} {
		if strings.HasPrefix(fn, "github.com/pg-invalidator/pg-invalidator/"+pkg+".") {
			return true
		}
	}
	return false
}

// TestRunLeavesNoGoroutine runs the daemon with every goroutine it can
// start (stream reader, heartbeat, reload watcher, metrics server and its
// pollers), ends it in each way it can end, and checks that nothing of it
// is still running once Run has returned.
func TestRunLeavesNoGoroutine(t *testing.T) {
	if left := ownGoroutines(); len(left) > 0 {
		t.Fatalf("goroutines running before the test:\n%s", strings.Join(left, "\n\n"))
	}
	tests := []struct {
		name    string
		dryRun  bool
		end     func(t *testing.T, db string, cancel context.CancelFunc)
		wantErr string // "" when Run must return nil
	}{
		{name: "cancelled", end: func(t *testing.T, db string, cancel context.CancelFunc) { cancel() }},
		{
			name: "stopped by a fatal error",
			end: func(t *testing.T, db string, cancel context.CancelFunc) {
				// Someone drops the slot: Run stops on its own, with ctx alive.
				conn, err := replication.ConnectSQL(context.Background(), db, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(context.Background())
				if _, err := replication.DropSlot(context.Background(), conn, replication.DefaultSlot); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "disappeared while the daemon was", // running, or starting a session: the drop may land between two
		},
		{name: "dry run cancelled", dryRun: true, end: func(t *testing.T, db string, cancel context.CancelFunc) { cancel() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := testenv.NewDatabase(t, env.PostgresURL)
			prefix := testenv.UniqueName()
			testenv.Exec(t, db, "CREATE TABLE items (id int PRIMARY KEY)")
			if tt.dryRun {
				testenv.Exec(t, db, replication.CreatePublicationSQL(replication.DefaultPublication, []string{"items"}))
			}
			rules, err := mapping.Parse("rules.toml", []byte("[[rule]]\ntable = \"items\"\ndel = [\""+prefix+":item:<id>\"]\n"))
			if err != nil {
				t.Fatal(err)
			}
			reload := make(chan struct{})
			cfg := Config{
				Rules:            rules,
				PostgresURL:      db,
				Targets:          []Target{{Name: DefaultTarget, Redis: invalidator.Options{URL: env.RedisURL}}},
				Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
				MaxBackoff:       100 * time.Millisecond,
				MetricsAddr:      "127.0.0.1:0",
				SlotPollInterval: 10 * time.Millisecond,
				Heartbeat:        10 * time.Millisecond,
				Reload:           reload,
				LoadRules:        func() (*mapping.Rules, error) { return rules, nil },
				DryRun:           tt.dryRun,
				DryRunOut:        io.Discard,
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- Run(ctx, cfg) }()

			slot := replication.DefaultSlot
			conn, err := replication.ConnectSQL(context.Background(), db, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
				if tt.dryRun {
					slot = "" // the temporary slot's name is the dry run's
					var n int
					conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_replication").Scan(&n)
					if n > 0 {
						break
					}
				} else if ok, _ := replication.SlotStreaming(context.Background(), conn, slot); ok {
					break
				}
				select {
				case err := <-done:
					t.Fatalf("Run returned before streaming: %v", err)
				default:
				}
				if time.Since(start) > 30*time.Second {
					t.Fatal("not streaming after 30s")
				}
			}
			time.Sleep(50 * time.Millisecond) // a few heartbeats and slot polls
			// A reload in flight, or done, when Run ends.
			if !tt.dryRun {
				select {
				case reload <- struct{}{}:
				case <-time.After(10 * time.Second):
					t.Fatal("the reload watcher took no reload within 10s")
				}
			}

			tt.end(t, db, cancel)
			select {
			case err := <-done:
				if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
					t.Fatalf("Run = %v, want %q", err, tt.wantErr)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return within 30s")
			}
			// A goroutine that has done its work may take a moment to leave
			// the scheduler; one that waits for anything never will.
			var left []string
			for range 50 {
				if left = ownGoroutines(); len(left) == 0 {
					return
				}
				time.Sleep(time.Millisecond)
			}
			t.Fatalf("%d goroutine(s) outlived Run:\n%s", len(left), strings.Join(left, "\n\n"))
		})
	}
}
