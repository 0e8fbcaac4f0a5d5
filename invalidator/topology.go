package invalidator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/pg-invalidator/pg-invalidator/internal/redact"
)

// The values of Options.Mode.
const (
	ModeSingle   = "single"   // one server, or a proxy, at Options.URL
	ModeCluster  = "cluster"  // Redis Cluster, seeded from Options.Addrs
	ModeSentinel = "sentinel" // the master Options.MasterName, found through the sentinels at Options.Addrs
)

// defaultWaitTimeout is the timeout of each WAIT when Options.WaitTimeout is zero.
const defaultWaitTimeout = time.Second

// newClient builds the go-redis client opts asks for. Whatever the mode,
// go-redis never resends a command by itself: MaxRetries is -1, and a
// cluster client follows no MOVED or ASK redirect (MaxRedirects -1, which
// also stops it from resending a node's whole pipeline after a network
// error). Apply resends failed commands itself, and only those.
func (inv *Invalidator) newClient(opts Options) error {
	tune := func(o *redis.Options) {
		o.MaxRetries = -1        // never resend a whole pipeline: INCRs would run twice
		o.DialerRetries = 1      // our own backoff decides when to try again
		o.DisableIdentity = true // no CLIENT SETINFO: Redis 7.0 logs handshake errors
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	}
	readTimeout := inv.readTimeout()
	switch opts.Mode {
	case "", ModeSingle:
		if len(opts.Addrs) > 0 || opts.MasterName != "" {
			return errors.New("redis addrs and master are for mode cluster or sentinel; mode single uses the url")
		}
		ro, err := redis.ParseURL(opts.URL)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) { // it quotes the whole URL, and RedactURL cannot parse it
				return fmt.Errorf("parse redis url: %w", ue.Err)
			}
			return fmt.Errorf("parse redis url %s: %w",
				redact.URL(opts.URL), redact.Error(err, opts.URL))
		}
		if opts.Username != "" {
			ro.Username = opts.Username
		}
		if opts.Password != "" {
			ro.Password = opts.Password
		}
		if ro.TLSConfig, err = tlsConfig(opts, ro.TLSConfig); err != nil {
			return err
		}
		tune(ro)
		ro.ReadTimeout = max(ro.ReadTimeout, readTimeout)
		rememberPassword(ro.Password)
		inv.single = redis.NewClient(ro)
		inv.client, inv.addr = inv.single, ro.Addr
	case ModeSentinel:
		if len(opts.Addrs) == 0 {
			return errors.New("redis mode sentinel: addrs lists no sentinel; add addrs = [\"host:26379\", ...]")
		}
		if opts.MasterName == "" {
			return errors.New("redis mode sentinel: master is empty; add master = \"the name the sentinels monitor\"")
		}
		tc, err := tlsConfig(opts, nil)
		if err != nil {
			return err
		}
		rememberPassword(opts.Password)
		inv.single = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:      opts.MasterName,
			SentinelAddrs:   opts.Addrs,
			Username:        opts.Username,
			Password:        opts.Password,
			TLSConfig:       tc,
			MaxRetries:      -1,
			DialerRetries:   1,
			ReadTimeout:     readTimeout,
			DisableIdentity: true,
		})
		inv.client = inv.single
		inv.addr = "sentinel master " + opts.MasterName + " via " + strings.Join(opts.Addrs, ",")
	case ModeCluster:
		if len(opts.Addrs) == 0 {
			return errors.New("redis mode cluster: addrs lists no node; add addrs = [\"host:7000\", ...]")
		}
		if opts.MasterName != "" {
			return errors.New("redis master is for mode sentinel only")
		}
		tc, err := tlsConfig(opts, nil)
		if err != nil {
			return err
		}
		rememberPassword(opts.Password)
		inv.cluster = redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                    opts.Addrs,
			Username:                 opts.Username,
			Password:                 opts.Password,
			TLSConfig:                tc,
			MaxRedirects:             -1,
			MaxRetries:               -1,
			DialerRetries:            1,
			ReadTimeout:              readTimeout,
			DisableIdentity:          true,
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		})
		inv.client = inv.cluster
		inv.addr = "cluster " + strings.Join(opts.Addrs, ",")
	default:
		return fmt.Errorf("redis mode %q: want single, cluster or sentinel", opts.Mode)
	}
	return nil
}

// readTimeout is the read timeout of every connection: go-redis's default
// of 3s, raised so that a WAIT can time out by itself first.
func (inv *Invalidator) readTimeout() time.Duration {
	d := 3 * time.Second
	if inv.waitReplicas > 0 {
		d = max(d, inv.waitTimeout+2*time.Second)
	}
	return d
}

// tlsConfig returns the TLS configuration opts asks for, on top of fromURL
// (that of a rediss:// URL; nil otherwise), or nil for none. Its errors name
// the setting at fault.
func tlsConfig(opts Options, fromURL *tls.Config) (*tls.Config, error) {
	on := opts.TLS || fromURL != nil
	if !on {
		for _, s := range []struct{ name, val string }{
			{"tls_ca", opts.TLSCA}, {"tls_cert", opts.TLSCert}, {"tls_key", opts.TLSKey}, {"tls_server_name", opts.TLSServerName},
		} {
			if s.val != "" {
				return nil, fmt.Errorf("redis %s is set but TLS is off: set tls = true (or use a rediss:// url)", s.name)
			}
		}
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if fromURL != nil {
		c = fromURL.Clone()
	}
	if opts.TLSCA != "" {
		pem, err := os.ReadFile(opts.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("redis tls_ca %s: %w", opts.TLSCA, pathErr(err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis tls_ca %s: no PEM certificate in the file", opts.TLSCA)
		}
		c.RootCAs = pool
	}
	switch {
	case opts.TLSCert != "" && opts.TLSKey != "":
		cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("redis tls_cert %s and tls_key %s: %w", opts.TLSCert, opts.TLSKey, pathErr(err))
		}
		c.Certificates = []tls.Certificate{cert}
	case opts.TLSCert != "":
		return nil, errors.New("redis tls_cert is set without tls_key; give both, or neither")
	case opts.TLSKey != "":
		return nil, errors.New("redis tls_key is set without tls_cert; give both, or neither")
	}
	if opts.TLSServerName != "" {
		c.ServerName = opts.TLSServerName
	}
	return c, nil
}

// pathErr drops the path and the operation from a *fs.PathError, which the
// caller's message names already.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// redirect reports whether err is a cluster redirect, MOVED or ASK, and
// for ASK the address to ask.
func redirect(err error) (moved bool, askAddr string) {
	switch {
	case redis.HasErrorPrefix(err, "MOVED"):
		return true, ""
	case redis.HasErrorPrefix(err, "ASK"):
		if f := strings.Fields(err.Error()); len(f) == 3 { // ASK <slot> <host:port>
			return false, f[2]
		}
	}
	return false, ""
}

// masters returns the client of every master: the one client outside
// cluster mode, and in cluster mode each master's node client, after
// reloading the slot map.
func (inv *Invalidator) masters(ctx context.Context) ([]*redis.Client, error) {
	if inv.cluster == nil {
		return []*redis.Client{inv.single}, nil
	}
	var mu sync.Mutex // protects list
	var list []*redis.Client
	err := inv.cluster.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		list = append(list, c)
		return nil
	})
	return list, err
}

// masterFor returns the client of the master that serves key, or, when
// askAddr is not empty, of the master at askAddr.
func (inv *Invalidator) masterFor(ctx context.Context, key, askAddr string) (*redis.Client, error) {
	if inv.cluster == nil {
		return inv.single, nil
	}
	if askAddr == "" {
		return inv.cluster.MasterForKey(ctx, key)
	}
	list, err := inv.masters(ctx)
	if err != nil {
		return nil, err
	}
	for _, c := range list {
		if c.Options().Addr == askAddr {
			return c, nil
		}
	}
	return nil, fmt.Errorf("ASK redirect to %s, which is not a master", askAddr)
}
