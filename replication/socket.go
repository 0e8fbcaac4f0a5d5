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
// not grow; while it is behind, it pauses before each read so that data
// accumulates and the read takes a lot at once.
//
// How long to pause is measured, not guessed: too short, and both sides
// pay a system call for every few messages; too long, and the walsender
// waits on a full socket. The pause adapts to the reads it gets (see
// adapt): longer while they come back much smaller than the largest seen,
// shorter once one comes back as large, which says the socket was full
// and the walsender may have waited. A fixed 20 ms pause tuned on one host
// made another (a 2-core AMD EPYC VM) catch up slower than pg_recvlogical,
// and 1 ms doubled the CPU both sides spent on a streamed transaction.
type socketReader struct {
	r      io.Reader
	buf    []byte
	rp, wp int // unread bytes are buf[rp:wp]
	// behind is set by the stream while the last commit it decoded is old.
	behind *atomic.Bool
	policy receivePolicy
	sock   socketTuner // sets the receive buffer; nil outside TCP
	// pause is how long to wait before the next read while behind, as
	// adapt last set it; largest is the largest read seen while behind.
	pause   time.Duration
	largest int
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
	// maxPause caps the pause before a read; zero: never pause.
	maxPause time.Duration
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
	// unixPolicy pauses at most briefly: on a Unix socket the walsender's
	// send buffer (212,992 bytes of accounting, about 277 small messages
	// or 18 KB) fills fast, and the pause mostly gives the walsender the
	// CPU it shares with the daemon on the database's host. It fills in
	// 0.3-0.5 ms on a 2-core Intel Xeon VM, so that a longer pause only
	// idles the walsender: capped at 500 µs rather than 2 ms, the one
	// 1,000,000-row UPDATE caught up in 4.24 s against 4.55 s (median of
	// 3, interleaved, 2026-12-08), the small backlog as before.
	unixPolicy = receivePolicy{name: "unix", maxPause: 500 * time.Microsecond}
	// tcpNearPolicy closes the window while behind, on a connection whose
	// round-trip time is at most nearRTT (loopback, one LAN).
	tcpNearPolicy = receivePolicy{name: "tcp-window", maxPause: 20 * time.Millisecond,
		catchUpBuf: 128 << 10, liveBuf: 4 << 20}
	// tcpFarPolicy is for a connection with a long or unknown round-trip
	// time, where a small window would cap the throughput: a short pause,
	// the buffer left to autotuning.
	tcpFarPolicy = receivePolicy{name: "tcp", maxPause: 2 * time.Millisecond}
)

// The pause's bounds and steps (see adapt). firstPause is where it starts.
const (
	firstPause = time.Millisecond
	pauseStep  = 250 * time.Microsecond
	minPause   = 100 * time.Microsecond
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
	s := &socketReader{r: r, buf: make([]byte, socketBufSize), behind: behind, policy: tcpFarPolicy, pause: firstPause}
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
		if behind && s.pause > 0 {
			time.Sleep(s.pause)
		}
		s.waitingSince.Store(int64(time.Since(epoch)))
		n, err := s.r.Read(s.buf)
		s.waitingSince.Store(0)
		s.rp, s.wp = 0, n
		if behind {
			s.adapt(n)
		}
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, s.buf[s.rp:s.wp])
	s.rp += n
	return n, nil
}

// adapt sets the pause before the next read from the n bytes this one
// got, while behind. A read as large as the largest seen says the socket
// was full, and the walsender may have waited on it: the pause halves. A
// read under half of it says the pause gave the walsender time for little:
// it grows by half and a step, up to the policy's maxPause. In between it
// stays. The largest read decays by an eighth of the gap each read, so
// that one burst larger than the socket usually holds does not set the
// bar for good.
func (s *socketReader) adapt(n int) {
	if s.policy.maxPause == 0 {
		return
	}
	if n > s.largest {
		s.largest = n
	} else {
		s.largest -= (s.largest - n) / 8
	}
	switch {
	case n >= s.largest*9/10:
		s.pause /= 2
		if s.pause < minPause {
			s.pause = 0
		}
	case n < s.largest/2:
		s.pause = min(s.pause*3/2+pauseStep, s.policy.maxPause)
	}
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
