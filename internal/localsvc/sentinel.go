package localsvc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the name the sentinels of a RedisSentinel monitor.
const SentinelMaster = "mymaster"

// RedisSentinel is a private master, its replica, and three sentinels that
// fail over after a second of silence. redis-server runs the sentinels
// (--sentinel), so the redis-sentinel package is not needed.
type RedisSentinel struct {
	Master    *RedisNode // the first master; after a failover, a replica
	Replica   *RedisNode // the first replica; after a failover, the master
	Sentinels []*RedisNode
	dir       string
}

// StartRedisSentinel starts the master, the replica and the sentinels, and
// waits until every sentinel sees the replica and the other sentinels.
func StartRedisSentinel(ctx context.Context) (*RedisSentinel, error) {
	dir, err := os.MkdirTemp("", "pginv-redissentinel-")
	if err != nil {
		return nil, fmt.Errorf("make the Redis Sentinel directory: %w", err)
	}
	s := &RedisSentinel{dir: dir}
	if s.Master, err = newRedisNode(dir, baseArgs); err != nil {
		s.Close()
		return nil, err
	}
	if s.Replica, err = newRedisNode(dir, func(port int, dir string) []string {
		return append(baseArgs(port, dir), "--replicaof", "127.0.0.1", strconv.Itoa(s.Master.Port))
	}); err != nil {
		s.Close()
		return nil, err
	}
	for range 3 {
		n, err := newRedisNode(dir, func(port int, dir string) []string {
			conf := filepath.Join(dir, "sentinel.conf") // sentinel rewrites it: it must be writable
			body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n"+
				"sentinel monitor %s 127.0.0.1 %d 2\n"+
				"sentinel down-after-milliseconds %[4]s 1000\n"+
				"sentinel failover-timeout %[4]s 5000\n"+
				"sentinel parallel-syncs %[4]s 1\n",
				port, dir, filepath.Join(dir, "redis.log"), SentinelMaster, s.Master.Port)
			os.WriteFile(conf, []byte(body), 0o644)
			return []string{conf, "--sentinel"}
		})
		if err != nil {
			s.Close()
			return nil, err
		}
		s.Sentinels = append(s.Sentinels, n)
	}
	if err := startNodes(ctx, append([]*RedisNode{s.Master, s.Replica}, s.Sentinels...)); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.waitReady(ctx, 30*time.Second); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// SentinelAddrs returns the sentinels' host:port.
func (s *RedisSentinel) SentinelAddrs() []string {
	var addrs []string
	for _, n := range s.Sentinels {
		addrs = append(addrs, n.Addr())
	}
	return addrs
}

// waitReady waits until each sentinel sees one replica and two other
// sentinels, and the replica is in sync.
func (s *RedisSentinel) waitReady(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := s.ready(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis sentinels not ready within %s: %w", within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *RedisSentinel) ready(ctx context.Context) error {
	for _, n := range s.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: n.Addr(), DisableIdentity: true, MaxRetries: -1})
		m, err := sc.Master(ctx, SentinelMaster).Result()
		sc.Close()
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", n.Addr(), err)
		}
		if m["num-slaves"] != "1" || m["num-other-sentinels"] != "2" {
			return fmt.Errorf("sentinel %s sees %s replicas and %s other sentinels", n.Addr(), m["num-slaves"], m["num-other-sentinels"])
		}
	}
	info, err := nodeInfo(ctx, s.Replica.Addr(), "replication")
	if err != nil {
		return err
	}
	if !strings.Contains(info, "master_link_status:up") {
		return fmt.Errorf("replica %s not in sync", s.Replica.Addr())
	}
	return nil
}

// MasterAddr asks the first sentinel that answers where the master is.
func (s *RedisSentinel) MasterAddr(ctx context.Context) (string, error) {
	var last error
	for _, n := range s.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: n.Addr(), DisableIdentity: true, MaxRetries: -1})
		a, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
		sc.Close()
		if err == nil && len(a) == 2 {
			return a[0] + ":" + a[1], nil
		}
		last = err
	}
	return "", fmt.Errorf("no sentinel knows the master: %v", last)
}

// Close kills every process and removes the directory.
func (s *RedisSentinel) Close() error {
	for _, n := range append([]*RedisNode{s.Master, s.Replica}, s.Sentinels...) {
		if n != nil {
			n.Kill()
		}
	}
	return os.RemoveAll(s.dir)
}
