package replication

import (
	"bytes"
	"crypto/tls"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
)

func TestPolicyForTransport(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	unix, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close()
	for _, l := range []net.Listener{tcp, unix} {
		go func() {
			for { // accepted connections close with the listener's test
				c, err := l.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
	}
	dial := func(network, addr string) net.Conn {
		c, err := net.Dial(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	tcpConn := dial("tcp", tcp.Addr().String())
	for _, tc := range []struct {
		name  string
		w     any
		want  string
		tuned bool
	}{
		{"loopback TCP", tcpConn, "tcp-window", true},
		{"TLS over loopback TCP", tls.Client(tcpConn, &tls.Config{}), "tcp-window", true},
		{"Unix socket", dial("unix", unix.Addr().String()), "unix", false},
		{"not a connection", &bytes.Buffer{}, "tcp", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := tc.w.(interface{ Write([]byte) (int, error) })
			p, tuner := policyFor(w)
			if p.name != tc.want || (tuner != nil) != tc.tuned {
				t.Errorf("policy %s, tuner %v; want %s, tuner %v", p.name, tuner != nil, tc.want, tc.tuned)
			}
		})
	}
}

// fakeTuner records the receive buffer sizes set.
type fakeTuner struct{ sizes []int }

func (f *fakeTuner) setReceiveBuffer(n int) error { f.sizes = append(f.sizes, n); return nil }

func TestReceiveBufferFollowsBehind(t *testing.T) {
	var behind atomic.Bool
	tuner := &fakeTuner{}
	s := &socketReader{r: bytes.NewReader(bytes.Repeat([]byte("x"), 10)), buf: make([]byte, 1), behind: &behind,
		policy: receivePolicy{catchUpBuf: 100, liveBuf: 1000}, sock: tuner}
	p := make([]byte, 1)
	for _, b := range []bool{false, true, true, false, false, true} {
		behind.Store(b)
		if _, err := s.Read(p); err != nil {
			t.Fatal(err)
		}
	}
	want := []int{100, 1000, 100}
	if len(tuner.sizes) != len(want) {
		t.Fatalf("sizes set %v, want %v", tuner.sizes, want)
	}
	for i := range want {
		if tuner.sizes[i] != want[i] {
			t.Fatalf("sizes set %v, want %v", tuner.sizes, want)
		}
	}
}
