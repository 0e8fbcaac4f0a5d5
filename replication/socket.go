package replication

import (
	"io"
	"sync/atomic"
	"time"
)

// socketReader sits between the connection and pgproto3's reader and decides
// how the socket is read.
//
// When the client drains the socket as fast as data arrives, the walsender
// finds it empty each time and sends every message in its own packet: one
// system call per message on each side, which made catching up on a backlog
// several times slower than the server can decode. So while the stream is
// behind, a read that returned little is followed by a short pause, the
// socket fills meanwhile, and the next read takes up to a whole buffer at
// once. While the stream is live, it never pauses, so the stale window does
// not grow.
type socketReader struct {
	r      io.Reader
	buf    []byte
	rp, wp int // unread bytes are buf[rp:wp]
	// behind is set by the stream while the last commit it decoded is old.
	behind *atomic.Bool
	// lastShort is true when the last read returned less than shortRead.
	lastShort bool
	// waitingSince is when the read of the socket in progress began, as a
	// time since epoch; 0 while none is. The stream's silence watch reads it
	// from another goroutine.
	waitingSince atomic.Int64
}

const (
	socketBufSize = 1 << 20
	shortRead     = 64 << 10
	catchUpPause  = time.Millisecond
)

func newSocketReader(r io.Reader, behind *atomic.Bool) *socketReader {
	return &socketReader{r: r, buf: make([]byte, socketBufSize), behind: behind}
}

// Read serves p from the buffer, reading the socket when it is empty.
func (s *socketReader) Read(p []byte) (int, error) {
	if s.rp == s.wp {
		if s.lastShort && s.behind.Load() {
			time.Sleep(catchUpPause)
		}
		s.waitingSince.Store(int64(time.Since(epoch)))
		n, err := s.r.Read(s.buf)
		s.waitingSince.Store(0)
		s.rp, s.wp = 0, n
		s.lastShort = n < shortRead
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
