package invalidator

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// How the replica count behind WAIT is read and kept.
const (
	// replicasFresh is how long a master's count of replicas is used before
	// it is read again. A WAIT that comes back short reads it again at once.
	replicasFresh = time.Second
	// replicasForget is how long a master that no pipeline or Ping reached
	// is remembered (and reported by Degraded) after its last reading: a
	// master killed in a failover stops being read.
	replicasForget = 30 * time.Second
	// replicaMaxLag is the longest a replica may go without acknowledging
	// the replication stream (INFO replication's lag, in whole seconds) and
	// still count. Replicas acknowledge every second; one that stops, frozen
	// or cut off without a FIN, stays "online" at the master until
	// repl-timeout (60s by default), and WAIT could never count it.
	replicaMaxLag = 5
)

// DegradedMaster is a master that has fewer replicas than
// Options.WaitReplicas: WAIT there asks for only as many as it has.
type DegradedMaster struct {
	Addr     string // host:port of the master
	Replicas int    // replicas in state online at the last reading
}

// replicaSet follows how many replicas each master has, for WAIT.
type replicaSet struct {
	want int // Options.WaitReplicas; 0: no WAIT, and no reading
	log  *slog.Logger
	// addrOf names the master behind a client (Invalidator.masterAddr);
	// with sentinels it is known only once a connection was dialled.
	addrOf func(c *redis.Client) string

	mu      sync.Mutex                 // protects masters
	masters map[string]*masterReplicas // by address
}

// masterReplicas is what is known of one master's replicas.
type masterReplicas struct {
	online   int       // replicas online and acknowledging, at the last reading
	readAt   time.Time // when online was read; zero: never
	degraded bool      // online < want at the last reading, and logged so
}

// waitFor returns how many replicas a WAIT on the master behind c must ask
// for: WaitReplicas, or fewer when the master has fewer replicas online. It
// reads the count with INFO replication when the one it has is older than
// replicasFresh, or at once when force is set. It returns WaitReplicas, and
// why, when the count cannot be read.
func (r *replicaSet) waitFor(ctx context.Context, c *redis.Client, force bool) (int, error) {
	now := time.Now()
	addr := r.addrOf(c)
	r.mu.Lock()
	m := r.masters[addr]
	if m != nil && !force && now.Sub(m.readAt) < replicasFresh {
		n := min(r.want, m.online)
		r.mu.Unlock()
		return n, nil
	}
	r.mu.Unlock()

	info, err := c.Info(ctx, "replication").Result()
	if redis.HasErrorPrefix(err, "NOPERM") {
		return r.want, fmt.Errorf("count the replicas of %s: %w (with wait_replicas, the ACL user needs +info)", addr, err)
	} else if err != nil {
		return r.want, fmt.Errorf("count the replicas of %s: %w", addr, err)
	}
	online, isMaster := onlineReplicas(info)
	if !isMaster { // its writes fail with READONLY: nothing to count
		return r.want, nil
	}
	addr = r.addrOf(c) // INFO may have dialled the first connection

	r.mu.Lock()
	defer r.mu.Unlock()
	r.forget(now)
	if m = r.masters[addr]; m == nil {
		m = &masterReplicas{}
		r.masters[addr] = m
	}
	m.online, m.readAt = online, now
	switch degraded := online < r.want; {
	case degraded && !m.degraded:
		r.log.Warn("redis master has fewer replicas than wait_replicas; its writes wait for those it has",
			"addr", addr, "replicas", online, "wait_replicas", r.want)
	case !degraded && m.degraded:
		r.log.Info("redis master has its replicas again", "addr", addr, "replicas", online, "wait_replicas", r.want)
	}
	m.degraded = online < r.want
	return min(r.want, online), nil
}

// forget drops the masters not read for replicasForget. r.mu is held.
func (r *replicaSet) forget(now time.Time) {
	for addr, m := range r.masters {
		if now.Sub(m.readAt) > replicasForget {
			if m.degraded {
				r.log.Info("redis master no longer reached; forgetting it", "addr", addr)
			}
			delete(r.masters, addr)
		}
	}
}

// degraded returns the masters read within replicasForget that have fewer
// replicas than wanted, by address.
func (r *replicaSet) degraded() []DegradedMaster {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forget(time.Now())
	var list []DegradedMaster
	for addr, m := range r.masters {
		if m.degraded {
			list = append(list, DegradedMaster{Addr: addr, Replicas: m.online})
		}
	}
	slices.SortFunc(list, func(a, b DegradedMaster) int { return strings.Compare(a.Addr, b.Addr) })
	return list
}

// onlineReplicas reads INFO replication: whether the server is a master,
// and how many of its replicas are in state online and acknowledged the
// stream within replicaMaxLag seconds. Those are the replicas WAIT counts
// and a failover could promote with the master's writes.
//
//	role:master
//	connected_slaves:2
//	slave0:ip=10.0.0.2,port=6379,state=online,offset=1234,lag=0
//	slave1:ip=10.0.0.3,port=6379,state=wait_bgsave,offset=0,lag=0
func onlineReplicas(info string) (online int, master bool) {
	for line := range strings.Lines(info) {
		line = strings.TrimSpace(line)
		if line == "role:master" {
			master = true
			continue
		}
		name, fields, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "slave") {
			continue
		}
		if _, err := strconv.Atoi(name[len("slave"):]); err != nil { // slave_repl_offset and the like
			continue
		}
		state, lag := "", -1
		for f := range strings.SplitSeq(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "state":
				state = v
			case "lag":
				lag, _ = strconv.Atoi(v)
			}
		}
		if state == "online" && lag >= 0 && lag <= replicaMaxLag {
			online++
		}
	}
	return online, master
}

// Degraded returns the masters that have fewer replicas in state online
// than Options.WaitReplicas, as last read (by Apply, or by Ping, which
// reads every master's count). WAIT on such a master asks for the replicas
// it has, so that invalidation goes on; a write it acknowledges is then
// held by fewer replicas than asked, or by none (see Options.WaitReplicas).
// Nil when WaitReplicas is zero.
func (inv *Invalidator) Degraded() []DegradedMaster {
	if inv.replicas.want == 0 {
		return nil
	}
	return inv.replicas.degraded()
}

// masterAddr returns the address of the master behind c, for the replica
// counts and logs: its node address in a cluster, the address dialled last
// for the sentinels' master, and the URL's otherwise.
func (inv *Invalidator) masterAddr(c *redis.Client) string {
	switch {
	case inv.cluster != nil:
		return c.Options().Addr
	case inv.sentinelMaster != nil:
		if a := inv.sentinelMaster.get(); a != "" {
			return a
		}
	}
	return inv.addr
}

// dialedAddr is a go-redis hook that keeps the remote address of the last
// connection dialled: with sentinels, the client's own options name no
// address, and the master is the one dialled last (go-redis drops the old
// master's connections when the sentinels announce a new one).
type dialedAddr struct {
	mu   sync.Mutex // protects addr
	addr string
}

func (d *dialedAddr) get() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.addr
}

func (d *dialedAddr) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err == nil {
			d.mu.Lock()
			d.addr = conn.RemoteAddr().String()
			d.mu.Unlock()
		}
		return conn, err
	}
}

func (d *dialedAddr) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (d *dialedAddr) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
