package replication

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// roundTrip reads the shortest round-trip time the kernel has seen on c
// (TCP_INFO's min_rtt, or its smoothed rtt on kernels without it): a
// loaded host delays a few round trips, never the shortest.
func roundTrip(c *net.TCPConn) (time.Duration, bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || ierr != nil {
		return 0, false
	}
	rtt := info.Rtt
	if info.Min_rtt != 0 {
		rtt = min(rtt, info.Min_rtt)
	}
	return time.Duration(rtt) * time.Microsecond, true
}
