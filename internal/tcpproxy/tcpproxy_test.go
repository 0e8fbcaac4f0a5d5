package tcpproxy

import (
	"bufio"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func echo(c net.Conn, r *bufio.Reader, within time.Duration) error {
	c.SetDeadline(time.Now().Add(within))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err == nil && line != "ping\n" {
		return errors.New("echoed " + line)
	}
	return err
}

func TestSilence(t *testing.T) {
	p, err := Start(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	old, oldR := dial(t, p.Addr())
	if err := echo(old, oldR, 5*time.Second); err != nil {
		t.Fatalf("before silence: %v", err)
	}
	if n := p.Silence(); n != 1 {
		t.Fatalf("Silence() = %d, want 1", n)
	}
	// The connection stays open, and nothing comes back: the read times
	// out, it does not end.
	if err := echo(old, oldR, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after silence: %v, want a timeout", err)
	}

	// A new connection works.
	c, r := dial(t, p.Addr())
	if err := echo(c, r, 5*time.Second); err != nil {
		t.Fatalf("new connection after silence: %v", err)
	}
}

func TestSwallowNew(t *testing.T) {
	p, err := Start(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	before, beforeR := dial(t, p.Addr())
	if err := echo(before, beforeR, 5*time.Second); err != nil { // accepted, and forwarded
		t.Fatalf("connection accepted before: %v", err)
	}
	p.SwallowNew(true)
	// A connection accepted now connects, and nothing comes back.
	swallowed, swallowedR := dial(t, p.Addr())
	if err := echo(swallowed, swallowedR, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection accepted while swallowing: %v, want a timeout", err)
	}
	// One accepted before works on.
	if err := echo(before, beforeR, 5*time.Second); err != nil {
		t.Fatalf("connection accepted before: %v", err)
	}

	p.SwallowNew(false)
	c, r := dial(t, p.Addr())
	if err := echo(c, r, 5*time.Second); err != nil {
		t.Fatalf("new connection after swallowing: %v", err)
	}
	if err := echo(swallowed, swallowedR, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection swallowed before: %v, want a timeout still", err)
	}
}

func TestCloseSilenced(t *testing.T) {
	p, err := Start(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	old, oldR := dial(t, p.Addr())
	if err := echo(old, oldR, 5*time.Second); err != nil {
		t.Fatalf("before silence: %v", err)
	}
	if n := p.Silence(); n != 1 {
		t.Fatalf("Silence() = %d, want 1", n)
	}
	live, liveR := dial(t, p.Addr())
	if err := echo(live, liveR, 5*time.Second); err != nil {
		t.Fatalf("connection accepted after the silence: %v", err)
	}

	if n := p.CloseSilenced(); n != 1 {
		t.Fatalf("CloseSilenced() = %d, want 1", n)
	}
	// The silenced connection ends, with an EOF or a reset, not a timeout.
	old.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := oldR.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silenced connection after CloseSilenced: read %v, want it closed", err)
	}
	if err := echo(live, liveR, 5*time.Second); err != nil {
		t.Fatalf("live connection after CloseSilenced: %v", err)
	}
	if n := p.CloseSilenced(); n != 0 {
		t.Fatalf("CloseSilenced() again = %d, want 0", n)
	}
	// A connection that ended is not silenced, nor counted.
	ended, _ := dial(t, p.Addr())
	ended.Close()
	waitEnded := time.Now().Add(5 * time.Second)
	for open, all := p.openConns(); (all != 2 || open != 1) && time.Now().Before(waitEnded); open, all = p.openConns() {
		time.Sleep(10 * time.Millisecond)
	}
	if n := p.Silence(); n != 1 {
		t.Fatalf("Silence() with one live connection and one ended = %d, want 1", n)
	}
}

// openConns counts the connections the proxy holds that have not ended,
// and all it holds.
func (p *Proxy) openConns() (open, all int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		select {
		case <-c.closed:
		default:
			open++
		}
	}
	return open, len(p.conns)
}
