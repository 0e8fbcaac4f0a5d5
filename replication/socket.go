package replication

import (
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// socketReader sits between the connection and pgproto3's reader and decides
// how the socket is read, by a receive policy chosen for the transport.
//
// When the client drains the socket as fast as data arrives, the walsender
// finds it empty each time and sends every message on its own: one system
// call per message on each side and, over TCP, one segment per message,
// whose loopback delivery runs on the walsender's CPU. That made catching
// up on a backlog several times slower than the server can decode. While
// the stream is live, nothing here ever pauses, so the stale window does
// not grow; while it is behind, the policy may pause after a short read so
// that data accumulates and the next read takes a lot at once.
type socketReader struct {
	r      io.Reader
	buf    []byte
	rp, wp int // unread bytes are buf[rp:wp]
	// behind is set by the stream while the last commit it decoded is old.
	behind *atomic.Bool
	policy receivePolicy
	sock   socketTuner // sets the receive buffer; nil outside TCP
	// lastShort is true when the last read returned less than the policy's
	// shortRead.
	lastShort bool
	// waitingSince is when the read of the socket in progress began, as a
	// time since epoch; 0 while none is. The stream's silence watch reads it
	// from another goroutine.
	waitingSince atomic.Int64
	// tuned is true while the receive buffer is the policy's catch-up size.
	tuned bool
}

// receivePolicy says how to read the socket while the stream is behind.
type receivePolicy struct {
	name string
	// pause follows a read of less than shortRead bytes; zero: never pause.
	pause     time.Duration
	shortRead int
	// catchUpBuf, when not zero, is the SO_RCVBUF set while behind, and
	// liveBuf the one set once live again. A receive buffer this small
	// closes the TCP window during a pause: the walsender's sends then only
	// append to its send queue, and the data leaves in large segments.
	// Setting SO_RCVBUF turns Linux's receive buffer autotuning off for the
	// connection's life, so it is set only on a connection with a small
	// round-trip time, where a small window costs no throughput.
	catchUpBuf, liveBuf int
}

var (
	// unixPolicy pauses only after a read much smaller than what the
	// walsender's send buffer holds (212,992 bytes of accounting, about 277
	// small messages or 18 KB): such a read means the walsender is slower
	// than the reader, and the pause gives it the CPU (a Unix socket means
	// the daemon shares the database's host) and lets its messages pile up.
	// A read of a full buffer means the walsender was blocked on it, and a
	// pause would only idle it.
	unixPolicy = receivePolicy{name: "unix", pause: time.Millisecond, shortRead: 12 << 10}
	// tcpNearPolicy closes the window while behind, on a connection whose
	// round-trip time is at most nearRTT (loopback, one LAN).
	tcpNearPolicy = receivePolicy{name: "tcp-window", pause: 20 * time.Millisecond, shortRead: 128 << 10,
		catchUpBuf: 128 << 10, liveBuf: 4 << 20}
	// tcpFarPolicy is for a connection with a long or unknown round-trip
	// time, where a small window would cap the throughput: a short pause
	// after a short read, the buffer left to autotuning.
	tcpFarPolicy = receivePolicy{name: "tcp", pause: time.Millisecond, shortRead: 64 << 10}
)

// nearRTT is the longest round-trip time at which the window-closing
// policy applies: 128 KB per round trip is still 128 MB/s at 1 ms.
const nearRTT = time.Millisecond

const socketBufSize = 1 << 20

// socketTuner sets a TCP socket's receive buffer.
type socketTuner interface {
	setReceiveBuffer(bytes int) error
}

func newSocketReader(r io.Reader, w io.Writer, behind *atomic.Bool) *socketReader {
	s := &socketReader{r: r, buf: make([]byte, socketBufSize), behind: behind, policy: tcpFarPolicy}
	s.policy, s.sock = policyFor(w)
	return s
}

// policyFor chooses the receive policy for the connection pgconn writes to.
func policyFor(w io.Writer) (receivePolicy, socketTuner) {
	c, ok := w.(net.Conn)
	if !ok {
		return tcpFarPolicy, nil
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	switch c := c.(type) {
	case *net.UnixConn:
		return unixPolicy, nil
	case *net.TCPConn:
		rtt, ok := roundTrip(c)
		if ok && rtt <= nearRTT {
			return tcpNearPolicy, tcpTuner{c}
		}
	}
	return tcpFarPolicy, nil
}

// Read serves p from the buffer, reading the socket when it is empty.
func (s *socketReader) Read(p []byte) (int, error) {
	if s.rp == s.wp {
		behind := s.behind.Load()
		if s.sock != nil && behind != s.tuned {
			size := s.policy.liveBuf
			if behind {
				size = s.policy.catchUpBuf
			}
			if s.sock.setReceiveBuffer(size) == nil {
				s.tuned = behind
			} else {
				s.sock = nil // leave the buffer alone from now on
			}
		}
		if s.lastShort && behind && s.policy.pause > 0 {
			time.Sleep(s.policy.pause)
		}
		s.waitingSince.Store(int64(time.Since(epoch)))
		n, err := s.r.Read(s.buf)
		s.waitingSince.Store(0)
		s.rp, s.wp = 0, n
		s.lastShort = n < s.policy.shortRead
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, s.buf[s.rp:s.wp])
	s.rp += n
	return n, nil
}

// silence returns when the read of the socket in progress began, which
// tells one silence from the next, and how long it has waited for data; 0
// and 0 while no read is in progress. Time spent elsewhere, handing events
// to a consumer blocked on Redis say, is not silence: the server's messages
// wait in the socket meanwhile.
func (s *socketReader) silence() (since int64, quiet time.Duration) {
	since = s.waitingSince.Load()
	if since == 0 {
		return 0, 0
	}
	return since, time.Since(epoch) - time.Duration(since)
}

// epoch is the origin of waitingSince, read on the monotonic clock.
var epoch = time.Now()

// Buffered returns how many bytes are read from the socket but not yet
// handed on.
func (s *socketReader) Buffered() int { return s.wp - s.rp }

// tcpTuner sets the receive buffer of a TCP connection.
type tcpTuner struct{ c *net.TCPConn }

func (t tcpTuner) setReceiveBuffer(n int) error { return t.c.SetReadBuffer(n) }
