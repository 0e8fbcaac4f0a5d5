package localsvc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// RedisNode is one redis-server process, run with arguments the caller
// chose, on a fixed port and directory, so that a test can kill it with
// SIGKILL and start it again as it was: a cluster node, a replica, a
// sentinel or a TLS-only server.
type RedisNode struct {
	Port int
	Dir  string // its working directory: logs, nodes.conf, sentinel.conf

	bin   string
	args  []string
	ready func(ctx context.Context) error // nil: plain PING on Port

	mu   sync.Mutex // protects cmd and done
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// newRedisNode makes a directory for a node on a free port. args are
// given the port and directory, and return the server's arguments.
func newRedisNode(parent string, args func(port int, dir string) []string) (*RedisNode, error) {
	bin, err := redisServer()
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(parent, strconv.Itoa(port))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make the Redis node directory: %w", err)
	}
	return &RedisNode{Port: port, Dir: dir, bin: bin, args: args(port, dir)}, nil
}

// Addr returns 127.0.0.1:port.
func (n *RedisNode) Addr() string { return "127.0.0.1:" + strconv.Itoa(n.Port) }

// Log returns what the server logged so far, for a failing test.
func (n *RedisNode) Log() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "redis.log"))
	return string(b)
}

// Start starts the server, again after Kill, and waits until it answers.
func (n *RedisNode) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return errors.New("redis node is already running")
	}
	cmd := exec.Command(n.bin, n.args...)
	cmd.Dir = n.Dir
	setProcAttr(cmd, serviceUser{})
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	n.cmd, n.done = cmd, done

	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		if n.ready != nil {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			err = n.ready(rctx)
			cancel()
		} else {
			err = ping(n.Addr())
		}
		if err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on port %d did not answer within 30s: %w", n.Port, err)
		}
		select {
		case <-done:
			n.cmd, n.done = nil, nil
			return fmt.Errorf("redis-server on port %d exited at start: %s", n.Port, n.Log())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill kills the server with SIGKILL, as a crash would, and waits for it
// to exit. It keeps the directory, so that Start brings the node back with
// its cluster or sentinel configuration (but no data).
func (n *RedisNode) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
	n.cmd, n.done = nil, nil
}

// Pause stops the process (SIGSTOP), as a frozen host would: its
// connections stay open, and nothing answers on them, until Resume. It is
// an error where processes cannot be stopped (Windows).
func (n *RedisNode) Pause() error { return n.signal(pause) }

// Resume continues a process Pause stopped (SIGCONT).
func (n *RedisNode) Resume() error { return n.signal(resume) }

func (n *RedisNode) signal(f func(*os.Process) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return errors.New("redis node is not running")
	}
	return f(n.cmd.Process)
}

// Running reports whether the process runs.
func (n *RedisNode) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// baseArgs are the arguments every node gets: loopback only, nothing on
// disk but the log.
func baseArgs(port int, dir string) []string {
	return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--unixsocket", filepath.Join(dir, redisSocket), "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log")}
}

// redisSocket is the name of a node's Unix socket in its directory.
const redisSocket = "redis.sock"

// SocketPath is the node's Unix socket, which it listens on besides its
// TCP port.
func (n *RedisNode) SocketPath() string { return filepath.Join(n.Dir, redisSocket) }

// startNodes starts nodes one after the other; on failure it kills those
// it started.
func startNodes(ctx context.Context, nodes []*RedisNode) error {
	for i, n := range nodes {
		if err := n.Start(ctx); err != nil {
			for _, m := range nodes[:i] {
				m.Kill()
			}
			return err
		}
	}
	return nil
}
