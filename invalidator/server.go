package invalidator

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// Server is the software one master runs, from INFO server.
type Server struct {
	// Name is "redis" or "valkey", from server_name: Redis leaves it
	// out, and Valkey sets it.
	Name string
	// Version is the release: valkey_version for Valkey, which answers
	// redis_version:7.2.4 whatever its own release, else redis_version.
	Version string
}

// ServerOf reads a Server from the fields of INFO server.
func ServerOf(info map[string]string) Server {
	s := Server{Name: strings.ToLower(info["server_name"]), Version: info["redis_version"]}
	if s.Name == "" {
		s.Name = "redis"
	}
	if v := info["valkey_version"]; v != "" {
		s.Version = v
	}
	if s.Version == "" {
		s.Version = "unknown"
	}
	return s
}

// String is "valkey 8.1.1".
func (s Server) String() string { return s.Name + " " + s.Version }

// Servers reads INFO server from every master once, as Evictions does,
// and returns each different server it found, sorted ("redis 7.0.15";
// two entries while a cluster is being upgraded). A master that does not
// answer, or an ACL user that may not run INFO, is left out; the error
// is returned when no master answered.
func (inv *Invalidator) Servers(ctx context.Context) ([]string, error) {
	masters, err := inv.masters(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the cluster's masters: %w", inv.redactErr(err))
	}
	var out []string
	var last error
	for _, m := range masters {
		info, err := m.InfoMap(ctx, "server").Result()
		if err != nil {
			last = fmt.Errorf("INFO server: %w", inv.redactErr(err))
			continue
		}
		if s := ServerOf(info["Server"]).String(); !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 && last != nil {
		return nil, last
	}
	slices.Sort(out)
	return out, nil
}
