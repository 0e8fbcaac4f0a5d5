package invalidator

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
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
	r.l.Log(ctx, slog.LevelDebug, redact(fmt.Sprintf(format, v...)), "component", "go-redis")
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
	for _, p := range passwords {
		if p == pw {
			return
		}
	}
	passwords = append(passwords, pw)
}

// urlPassword matches the password in a URL's user info, "://user:password@".
var urlPassword = regexp.MustCompile(`(://[^/@\s:]*:)[^/@\s]*@`)

func redact(s string) string {
	s = urlPassword.ReplaceAllString(s, "${1}REDACTED@")
	passwordsMu.Lock()
	defer passwordsMu.Unlock()
	for _, pw := range passwords {
		s = strings.ReplaceAll(s, pw, "REDACTED")
	}
	return s
}
