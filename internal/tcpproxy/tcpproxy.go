// Package tcpproxy is a TCP proxy for tests that need a network fault
// between a client and a real server: it forwards every connection it
// accepts to one address until told to go silent.
//
// Silence stops forwarding on every connection established so far, in both
// directions, without closing any of them: bytes sent either way are read
// and dropped, and no FIN or RST ever reaches either end. That is what a
// client sees when the server's host loses power, a NAT entry is dropped, or
// a virtual IP moves to another host. Connections accepted afterwards are
// forwarded as usual, unless SwallowNew is on: then they are silent from
// the start, as connections to a host that is still gone, whose every
// connect times out. CloseSilenced ends the silenced connections, as the
// resets of a network that came back do.
package tcpproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Proxy forwards connections from its listener to a target address.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and every connection's copiers

	mu      sync.Mutex    // protects conns and closed
	conns   []*conn       // every connection accepted
	closed  bool          // Close was called: accept no more
	done    chan struct{} // closed by Close: silent copiers stop waiting
	swallow atomic.Bool   // connections accepted now are silent from the start
}

type conn struct {
	client, server net.Conn
	silent         chan struct{} // closed when the connection goes silent
	closed         chan struct{} // closed when both ends are
	halfClosed     atomic.Int32  // directions that have ended with EOF
	once           sync.Once     // closes both ends once
}

// Start listens on a free port of 127.0.0.1 and forwards every connection
// to target (host:port).
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, ln: ln, done: make(chan struct{})}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr returns the host:port clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		c := &conn{client: client, server: server, silent: make(chan struct{}), closed: make(chan struct{})}
		if p.swallow.Load() {
			close(c.silent)
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.close()
			return
		}
		p.conns = append(p.conns, c)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(c, c.server, c.client) })
		p.wg.Go(func() { p.pipe(c, c.client, c.server) })
	}
}

// pipe copies from src to dst, passing on a half-close, until either end
// fails; once c is silent it drops what it reads instead, until the proxy
// closes or CloseSilenced ends c.
func (p *Proxy) pipe(c *conn, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-c.silent:
			// Keep reading, so that the sender never sees its window
			// close, and forward nothing, not even an end.
			if err != nil {
				select {
				case <-p.done:
				case <-c.closed: // CloseSilenced
				}
				c.close()
				return
			}
			continue
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				c.close()
				return
			}
		}
		if errors.Is(err, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite() // the other direction goes on
				if c.halfClosed.Add(1) == 2 {
					c.close()
				}
				return
			}
		}
		if err != nil {
			c.close()
			return
		}
	}
}

func (c *conn) close() {
	c.once.Do(func() {
		c.client.Close()
		c.server.Close()
		close(c.closed)
	})
}

// Silence stops forwarding on every connection accepted so far that is
// still open, in both directions, and leaves them open. It returns how many
// it silenced. Connections that ended are forgotten.
func (p *Proxy) Silence() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	open := p.conns[:0]
	for _, c := range p.conns {
		select {
		case <-c.closed:
			continue
		default:
		}
		open = append(open, c)
		select {
		case <-c.silent:
		default:
			close(c.silent)
			n++
		}
	}
	clear(p.conns[len(open):])
	p.conns = open
	return n
}

// CloseSilenced closes both ends of every connection silenced so far, as
// when the network comes back and each end learns, from the other's reset,
// that its peer gave up long ago. Until then a silenced connection holds
// its server-side session (a PostgreSQL backend, a walsender and its slot)
// for as long as the proxy runs. It returns how many it closed.
func (p *Proxy) CloseSilenced() int {
	p.mu.Lock()
	var silenced, live []*conn
	for _, c := range p.conns {
		select {
		case <-c.silent:
			silenced = append(silenced, c)
		default:
			live = append(live, c)
		}
	}
	p.conns = live
	p.mu.Unlock()
	for _, c := range silenced {
		c.close()
	}
	return len(silenced)
}

// SwallowNew makes the connections accepted from now on silent from the
// start (on), or forwarded as usual again (off). Connections accepted
// before keep their state.
func (p *Proxy) SwallowNew(on bool) { p.swallow.Store(on) }

// Close stops accepting, closes every connection, and waits for its
// goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	conns := p.conns
	p.mu.Unlock()
	err := p.ln.Close()
	for _, c := range conns {
		c.close()
	}
	p.wg.Wait()
	return err
}
