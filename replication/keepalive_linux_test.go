package replication

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// keepalive reads the TCP keepalive options of c's socket: whether they
// are on, and idle, interval (seconds) and count.
func keepalive(t *testing.T, c net.Conn) [4]int {
	t.Helper()
	if u, ok := c.(interface{ NetConn() net.Conn }); ok { // TLS
		c = u.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("the connection is a %T, not TCP: run the tests against PostgreSQL over TCP", c)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got [4]int
	var serr error
	err = raw.Control(func(fd uintptr) {
		for i, opt := range [][2]int{
			{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL},
			{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT},
		} {
			if got[i], serr = syscall.GetsockoptInt(int(fd), opt[0], opt[1]); serr != nil {
				return
			}
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// withQuery adds params to the query of a postgres:// URL.
func withQuery(url, params string) string {
	if strings.Contains(url, "?") {
		return url + "&" + params
	}
	return url + "?" + params
}

// TestKeepalives checks the TCP keepalives of both kinds of connection on
// their sockets: derived from the timeout, or as libpq's parameters in the
// URL say, which the server would otherwise refuse as unknown settings.
func TestKeepalives(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		params  string
		timeout time.Duration
		want    [4]int // on, idle, interval, count
	}{
		{"", 0, [4]int{1, 15, 5, 3}},
		{"", 12 * time.Second, [4]int{1, 6, 2, 3}},
		{"", 2 * time.Second, [4]int{1, 1, 1, 3}},
		{"keepalives_idle=7&keepalives_count=4", 0, [4]int{1, 7, 5, 4}},
		{"keepalives=1&keepalives_interval=9", 0, [4]int{1, 15, 9, 3}},
	}
	for _, tt := range tests {
		url := withQuery(env.PostgresURL, tt.params)
		conn, err := ConnectSQL(ctx, url, tt.timeout)
		if err != nil {
			t.Fatalf("ConnectSQL %q: %v", tt.params, err)
		}
		if got := keepalive(t, conn.PgConn().Conn()); got != tt.want {
			t.Errorf("ConnectSQL %q, timeout %s: keepalive (on, idle, interval, count) = %v, want %v", tt.params, tt.timeout, got, tt.want)
		}
		conn.Close(ctx)

		s, err := Connect(ctx, Config{URL: url, Slot: "unused", Publication: "unused", Timeout: tt.timeout})
		if err != nil {
			t.Fatalf("Connect %q: %v", tt.params, err)
		}
		if got := keepalive(t, s.conn.Conn()); got != tt.want {
			t.Errorf("Connect %q, timeout %s: keepalive (on, idle, interval, count) = %v, want %v", tt.params, tt.timeout, got, tt.want)
		}
		s.Close(ctx)
	}

	conn, err := ConnectSQL(ctx, withQuery(env.PostgresURL, "keepalives=0"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := keepalive(t, conn.PgConn().Conn()); got[0] != 0 {
		t.Errorf("keepalives=0: SO_KEEPALIVE = %d, want 0", got[0])
	}
	conn.Close(ctx)

	_, err = ConnectSQL(ctx, withQuery(env.PostgresURL, "keepalives_idle=soon"), 0)
	if want := `keepalives_idle "soon": want a whole number of seconds, 1 or more (keepalives: 0 or 1)`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("keepalives_idle=soon: %v, want an error containing %q", err, want)
	}
}
