package localsvc

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Redis is a private redis-server that keeps nothing on disk: one RedisNode
// in a directory of its own.
type Redis struct {
	*RedisNode
	parent string // the temporary directory Close removes
}

// StartRedis starts redis-server on a free port and waits until it answers PING.
func StartRedis(ctx context.Context) (*Redis, error) {
	parent, err := os.MkdirTemp("", "pginv-redis-")
	if err != nil {
		return nil, fmt.Errorf("make the Redis directory: %w", err)
	}
	n, err := newRedisNode(parent, baseArgs)
	if err != nil {
		os.RemoveAll(parent)
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		os.RemoveAll(parent)
		return nil, err
	}
	return &Redis{RedisNode: n, parent: parent}, nil
}

// URL returns the redis:// URL of database 0.
func (r *Redis) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port) }

// UnixURL returns the unix:// URL of database 0, over the server's Unix
// socket.
func (r *Redis) UnixURL() string { return "unix://" + r.SocketPath() + "?db=0" }

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}

// Stop kills the server and waits for it to exit. Redis keeps nothing on
// disk here, so a later Start begins empty.
func (r *Redis) Stop() error {
	r.Kill()
	return nil
}

// StopSave shuts the server down with SHUTDOWN SAVE, so that the next Start
// loads the same keys from its dump file, like a restart of a persistent
// Redis.
func (r *Redis) StopSave() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return nil
	}
	if c, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("SHUTDOWN SAVE\r\n"))
		bufio.NewReader(c).ReadString('\n') // the server closes the connection
		c.Close()
	}
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Signal(syscall.SIGKILL)
		<-r.done
	}
	r.cmd, r.done = nil, nil
	return nil
}

// Close stops the server and removes its directory.
func (r *Redis) Close() error {
	r.Kill()
	return os.RemoveAll(filepath.Clean(r.parent))
}
