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
		n, err := s.r.Read(s.buf)
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

// Buffered returns how many bytes are read from the socket but not yet
// handed on.
func (s *socketReader) Buffered() int { return s.wp - s.rp }
