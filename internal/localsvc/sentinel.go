package localsvc

import (
	"context"
	"errors"
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
	// Added are the replicas AddReplica started, in order.
	Added   []*RedisNode
	Options SentinelOptions
	dir     string
}

// SentinelOptions are the passwords of a RedisSentinel. The zero value
// requires none.
type SentinelOptions struct {
	// Password, when set, is the requirepass of the master and the replica
	// (and their masterauth, and the sentinels' auth-pass for them).
	Password string
	// SentinelUsername and SentinelPassword, when the password is set, make
	// the sentinels themselves require authentication: as that ACL user
	// (the default user is then off), or with requirepass when the username
	// is empty. The sentinels authenticate to each other the same way.
	SentinelUsername, SentinelPassword string
	// SentinelUsers are more ACL users of the sentinels, each a line of an
	// ACL file ("user NAME on >PASSWORD ..."), such as a client's own user.
	SentinelUsers []string
}

// StartRedisSentinel starts the master, the replica and the sentinels, and
// waits until every sentinel sees the replica and the other sentinels.
func StartRedisSentinel(ctx context.Context) (*RedisSentinel, error) {
	return StartRedisSentinelWith(ctx, SentinelOptions{})
}

// StartRedisSentinelWith is StartRedisSentinel with passwords.
func StartRedisSentinelWith(ctx context.Context, opts SentinelOptions) (*RedisSentinel, error) {
	dir, err := os.MkdirTemp("", "pginv-redissentinel-")
	if err != nil {
		return nil, fmt.Errorf("make the Redis Sentinel directory: %w", err)
	}
	s := &RedisSentinel{dir: dir, Options: opts}
	dataArgs := func(port int, dir string) []string {
		args := baseArgs(port, dir)
		if opts.Password != "" {
			args = append(args, "--requirepass", opts.Password, "--masterauth", opts.Password)
		}
		return args
	}
	if s.Master, err = newRedisNode(dir, dataArgs); err != nil {
		s.Close()
		return nil, err
	}
	if s.Replica, err = newRedisNode(dir, func(port int, dir string) []string {
		return append(dataArgs(port, dir), "--replicaof", "127.0.0.1", strconv.Itoa(s.Master.Port))
	}); err != nil {
		s.Close()
		return nil, err
	}
	if opts.Password != "" {
		for _, n := range []*RedisNode{s.Master, s.Replica} {
			n.ready = func(ctx context.Context) error {
				c := s.dataClient(n.Addr())
				defer c.Close()
				return c.Ping(ctx).Err()
			}
		}
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
			if opts.Password != "" {
				body += fmt.Sprintf("sentinel auth-pass %s %s\n", SentinelMaster, opts.Password)
			}
			switch {
			case opts.SentinelPassword != "" && opts.SentinelUsername != "":
				body += fmt.Sprintf("user default off\nuser %s on >%s allcommands allchannels\n"+
					"sentinel sentinel-user %[1]s\nsentinel sentinel-pass %[2]s\n", opts.SentinelUsername, opts.SentinelPassword)
			case opts.SentinelPassword != "":
				body += fmt.Sprintf("requirepass %s\nsentinel sentinel-pass %[1]s\n", opts.SentinelPassword)
			}
			for _, u := range opts.SentinelUsers {
				body += u + "\n"
			}
			os.WriteFile(conf, []byte(body), 0o600)
			return []string{conf, "--sentinel"}
		})
		if err != nil {
			s.Close()
			return nil, err
		}
		n.ready = func(ctx context.Context) error {
			c := s.sentinelClient(n.Addr())
			defer c.Close()
			return c.Ping(ctx).Err()
		}
		s.Sentinels = append(s.Sentinels, n)
	}
	if err := startNodes(ctx, append([]*RedisNode{s.Master, s.Replica}, s.Sentinels...)); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.waitReady(ctx, 30*time.Second); err != nil {
		var logs strings.Builder // the end of each sentinel's log, to see why
		for _, n := range s.Sentinels {
			lines := strings.Split(strings.TrimSpace(n.Log()), "\n")
			fmt.Fprintf(&logs, "\nsentinel %s:\n%s", n.Addr(), strings.Join(lines[max(0, len(lines)-8):], "\n"))
		}
		s.Close()
		return nil, fmt.Errorf("%w%s", err, logs.String())
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
		sc := s.sentinelClient(n.Addr())
		m, err := sc.Master(ctx, SentinelMaster).Result()
		sc.Close()
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", n.Addr(), err)
		}
		if m["num-slaves"] != "1" || m["num-other-sentinels"] != "2" {
			return fmt.Errorf("sentinel %s sees %s replicas and %s other sentinels", n.Addr(), m["num-slaves"], m["num-other-sentinels"])
		}
	}
	rc := s.dataClient(s.Replica.Addr())
	defer rc.Close()
	info, err := rc.Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("%s: %w", s.Replica.Addr(), err)
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
		sc := s.sentinelClient(n.Addr())
		a, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
		sc.Close()
		if err == nil && len(a) == 2 {
			return a[0] + ":" + a[1], nil
		}
		last = err
	}
	return "", fmt.Errorf("no sentinel knows the master: %v", last)
}

// sentinelClient returns a client of the sentinel at addr, authenticated as
// Options says; the caller closes it.
func (s *RedisSentinel) sentinelClient(addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: addr, Username: s.Options.SentinelUsername,
		Password: s.Options.SentinelPassword, DisableIdentity: true, MaxRetries: -1, DialTimeout: time.Second})
}

// dataClient returns a client of the master or replica at addr,
// authenticated as Options says; the caller closes it.
func (s *RedisSentinel) dataClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: addr, Password: s.Options.Password,
		DisableIdentity: true, MaxRetries: -1, DialTimeout: time.Second})
}

// AddReplica starts a new node as a replica of the current master, as an
// operator gives a master a replica again after a failover, and waits until
// it is in sync and every sentinel lists it as a replica that is up. A
// killed master stays dead: this is a new node, on a new port.
func (s *RedisSentinel) AddReplica(ctx context.Context, within time.Duration) (*RedisNode, error) {
	deadline := time.Now().Add(within)
	var master string
	for {
		var err error
		if master, err = s.agreedMaster(ctx); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no master to replicate within %s: %w", within, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	host, port, _ := strings.Cut(master, ":")
	n, err := newRedisNode(s.dir, func(p int, dir string) []string {
		args := append(baseArgs(p, dir), "--replicaof", host, port)
		if s.Options.Password != "" {
			args = append(args, "--requirepass", s.Options.Password, "--masterauth", s.Options.Password)
		}
		return args
	})
	if err != nil {
		return nil, err
	}
	if s.Options.Password != "" {
		n.ready = func(ctx context.Context) error {
			c := s.dataClient(n.Addr())
			defer c.Close()
			return c.Ping(ctx).Err()
		}
	}
	if err := n.Start(ctx); err != nil {
		return nil, err
	}
	s.Added = append(s.Added, n)
	for {
		err := s.replicaUp(ctx, n)
		if err == nil {
			return n, nil
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("replica %s not in sync and known to the sentinels within %s: %w", n.Addr(), within, err)
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// agreedMaster returns the master every sentinel names, once that node says
// it is a master: right after a failover a sentinel may still name the old
// one, and a replica of a dead master never syncs.
func (s *RedisSentinel) agreedMaster(ctx context.Context) (string, error) {
	var master string
	for _, n := range s.Sentinels {
		sc := s.sentinelClient(n.Addr())
		a, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
		sc.Close()
		if err != nil || len(a) != 2 {
			return "", fmt.Errorf("sentinel %s: %v", n.Addr(), err)
		}
		switch addr := a[0] + ":" + a[1]; {
		case master == "":
			master = addr
		case addr != master:
			return "", fmt.Errorf("the sentinels name %s and %s", master, addr)
		}
	}
	mc := s.dataClient(master)
	defer mc.Close()
	info, err := mc.Info(ctx, "replication").Result()
	if err != nil {
		return "", fmt.Errorf("%s: %w", master, err)
	}
	if !strings.Contains(info, "role:master") {
		return "", fmt.Errorf("%s is not a master yet", master)
	}
	return master, nil
}

// replicaUp says why n is not yet a replica in sync that every sentinel
// lists as up; nil when it is.
func (s *RedisSentinel) replicaUp(ctx context.Context, n *RedisNode) error {
	rc := s.dataClient(n.Addr())
	info, err := rc.Info(ctx, "replication").Result()
	rc.Close()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "master_link_status:up") {
		return errors.New("not in sync with its master")
	}
	for _, sn := range s.Sentinels {
		sc := s.sentinelClient(sn.Addr())
		replicas, err := sc.Replicas(ctx, SentinelMaster).Result()
		sc.Close()
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", sn.Addr(), err)
		}
		listed := false
		for _, r := range replicas {
			if r["ip"]+":"+r["port"] == n.Addr() && !strings.Contains(r["flags"], "down") && !strings.Contains(r["flags"], "disconnected") {
				listed = true
			}
		}
		if !listed {
			return fmt.Errorf("sentinel %s does not list it as a replica that is up", sn.Addr())
		}
	}
	return nil
}

// Close kills every process and removes the directory.
func (s *RedisSentinel) Close() error {
	for _, n := range append(append([]*RedisNode{s.Master, s.Replica}, s.Added...), s.Sentinels...) {
		if n != nil {
			n.Kill()
		}
	}
	return os.RemoveAll(s.dir)
}
