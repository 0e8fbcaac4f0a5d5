package invalidator

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/pg-invalidator/pg-invalidator/internal/redact"
)

// SetLogger routes go-redis's own log lines, which bypass the daemon's
// logger, through l. They go at Debug level: go-redis logs a line for every
// failed dial, and whatever makes a command fail already reaches Apply or
// Ping as an error, which the Invalidator logs once per state change.
// Passwords are redacted from the lines: any in a URL's user info, and the
// password of every URL given to New.
func SetLogger(l *slog.Logger) { redis.SetLogger(redisLogger{l}) }

// redisLogger adapts a slog.Logger to go-redis's Logging interface.
type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if ctx == nil {
		ctx = context.Background()
	}
	r.l.Log(ctx, slog.LevelDebug, redactLine(fmt.Sprintf(format, v...)), "component", "go-redis")
}

var (
	passwordsMu sync.Mutex // protects passwords
	passwords   []string   // of the URLs given to New
)

func rememberPassword(pw string) {
	if pw == "" {
		return
	}
	passwordsMu.Lock()
	defer passwordsMu.Unlock()
	if !slices.Contains(passwords, pw) {
		passwords = append(passwords, pw)
	}
}

// redactLine hides the passwords in one of go-redis's log lines: any in a
// URL's user info, and every password given to New.
func redactLine(s string) string {
	passwordsMu.Lock()
	defer passwordsMu.Unlock()
	return redact.Text(s, passwords...)
}
