package localsvc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a private Redis Cluster on loopback: masters, each with
// its replicas, created by redis-cli --cluster create.
type RedisCluster struct {
	Nodes       []*RedisNode // in the order given to redis-cli; roles change on failover
	dir         string
	nodeTimeout time.Duration
	lone        []*RedisNode // started by StartLoneNode
}

// StartRedisCluster starts masters*(1+replicas) cluster nodes with the
// given cluster-node-timeout, creates the cluster, and waits until every
// node reports cluster_state:ok and every replica is in sync with its
// master. Replicas fail over whatever their lag
// (cluster-replica-validity-factor 0).
func StartRedisCluster(ctx context.Context, masters, replicas int, nodeTimeout time.Duration) (*RedisCluster, error) {
	cli, err := redisCLI()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pginv-rediscluster-")
	if err != nil {
		return nil, fmt.Errorf("make the Redis Cluster directory: %w", err)
	}
	c := &RedisCluster{dir: dir, nodeTimeout: nodeTimeout}
	for range masters * (1 + replicas) {
		n, err := c.newNode()
		if err != nil {
			c.Close()
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	if err := startNodes(ctx, c.Nodes); err != nil {
		c.Close()
		return nil, err
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		c.Close()
		return nil, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := c.WaitHealthy(ctx, 30*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// newNode makes a cluster node, not started.
func (c *RedisCluster) newNode() (*RedisNode, error) {
	// The bus port defaults to port+10000, which nothing keeps free: pick
	// one that is free now instead.
	busPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	return newRedisNode(c.dir, func(port int, dir string) []string {
		return append(baseArgs(port, dir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(busPort),
			"--cluster-node-timeout", strconv.FormatInt(c.nodeTimeout.Milliseconds(), 10),
			"--cluster-replica-validity-factor", "0")
	})
}

// StartLoneNode starts a node configured like the cluster's that has not
// joined it: it owns no slot and knows no other node, until a CLUSTER MEET.
// It is not one of Nodes; Close kills it.
func (c *RedisCluster) StartLoneNode(ctx context.Context) (*RedisNode, error) {
	n, err := c.newNode()
	if err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		return nil, err
	}
	c.lone = append(c.lone, n)
	return n, nil
}

// Addrs returns every node's host:port.
func (c *RedisCluster) Addrs() []string {
	var addrs []string
	for _, n := range c.Nodes {
		addrs = append(addrs, n.Addr())
	}
	return addrs
}

// WaitHealthy waits until every running node reports cluster_state:ok and
// every running replica's link to its master is up.
func (c *RedisCluster) WaitHealthy(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		err := c.healthy(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis cluster not healthy within %s: %w", within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *RedisCluster) healthy(ctx context.Context) error {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		info, err := nodeInfo(ctx, n.Addr(), "cluster info", "replication")
		if err != nil {
			return err
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster_state is not ok", n.Addr())
		}
		if strings.Contains(info, "role:slave") && !strings.Contains(info, "master_link_status:up") {
			return fmt.Errorf("%s: replica not in sync with its master", n.Addr())
		}
	}
	return nil
}

// Master returns the node that is master of the slot of key now.
func (c *RedisCluster) Master(ctx context.Context, key string) (*RedisNode, error) {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), DisableIdentity: true})
	defer rdb.Close()
	m, err := rdb.MasterForKey(ctx, key)
	if err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if n.Addr() == m.Options().Addr {
			return n, nil
		}
	}
	return nil, fmt.Errorf("master %s of %q is not a node of this cluster", m.Options().Addr, key)
}

// Close kills every node and removes the directory.
func (c *RedisCluster) Close() error {
	for _, n := range append(c.Nodes, c.lone...) {
		n.Kill()
	}
	return os.RemoveAll(c.dir)
}

// nodeInfo runs INFO for each section on the plain server at addr and
// returns the replies, joined.
func nodeInfo(ctx context.Context, addr string, sections ...string) (string, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true, MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	var b strings.Builder
	for _, s := range sections {
		var v string
		var err error
		if s == "cluster info" {
			v, err = rdb.ClusterInfo(ctx).Result()
		} else {
			v, err = rdb.Info(ctx, s).Result()
		}
		if err != nil {
			return "", fmt.Errorf("%s: %s: %w", addr, s, err)
		}
		b.WriteString(v)
	}
	return b.String(), nil
}
