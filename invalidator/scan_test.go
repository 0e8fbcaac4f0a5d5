package invalidator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/testenv"
)

func TestOwnSlots(t *testing.T) {
	const other = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922\n"
	tests := []struct {
		name, nodes string
		want        string
	}{
		{"ranges and a single slot", "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n" +
			"67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 10923 16000-16383\n" + other,
			"[[0 5460] [10923 10923] [16000 16383]]"},
		{"migrating and importing slots do not count", "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-100 [101->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca] [102-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]\n",
			"[[0 100]]"},
		{"a node that has not joined", "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 :30001@31001 myself,master - 0 0 0 connected\n", "[]"},
		{"no myself line", other, "[]"},
		{"a replica", "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 myself,slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n" + other, "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprint(ownSlots(tt.nodes)); got != tt.want {
				t.Errorf("ownSlots = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestInfoField(t *testing.T) {
	info := "# Server\r\nredis_version:7.0.15\r\nrun_id:3c1d6fbd8b3a5f1d0d0b4b0e2f0c1a9d8e7f6a5b\r\ntcp_port:6379\r\n"
	if got, want := infoField(info, "run_id"), "3c1d6fbd8b3a5f1d0d0b4b0e2f0c1a9d8e7f6a5b"; got != want {
		t.Errorf("infoField(run_id) = %q, want %q", got, want)
	}
	if got := infoField(info, "run"); got != "" {
		t.Errorf("infoField(run) = %q, want empty", got)
	}
}

// TestScanContextEndsBetweenMasters ends Apply's context just as the scan
// of a pattern ends on one master of a cluster, before the next master's:
// the keys of the masters not scanned remain, so Apply must return ctx's
// error, not nil, on which the daemon would acknowledge the batch. The
// moment comes from a wrapper of the real SCAN page (the seam scanPage)
// that gives each master's scan one more page, empty, after its last, and
// ends ctx there: a page with keys would fail on the ended ctx anyway.
func TestScanContextEndsBetweenMasters(t *testing.T) {
	cl := startCluster(t)
	rdb := clusterClient(t, cl)
	var kv []string
	for i := range 300 {
		kv = append(kv, "cut:"+strconv.Itoa(i), "x")
	}
	clusterSet(t, rdb, 0, kv...)
	inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs(), ScanCount: 50})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const endPage = math.MaxUint64 // a cursor no SCAN of a few hundred keys returns
	var runID string               // of the master whose last page was just read
	var ended []string             // the masters whose scan ended
	inv.scanPage = func(ctx context.Context, m *redis.Client, cursor uint64, match string, count int64) ([]string, uint64, string, error) {
		if cursor == endPage {
			ended = append(ended, m.Options().Addr)
			cancel()
			return nil, 0, runID, nil
		}
		keys, next, id, err := scanPage(ctx, m, cursor, match, count)
		if err == nil && next == 0 {
			next, runID = endPage, id
		}
		return keys, next, id, err
	}

	b := NewBatch()
	b.Add(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "cut:*"})
	b.EndTx(0)
	err := inv.Apply(ctx, b)
	t.Logf("Apply: %v", err)
	left := testenv.KeysPerMaster(t, rdb, "cut:*")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Apply = %v, with ctx ended after the scan of %v and keys left on %v; want context.Canceled", err, ended, left)
	}
	if len(left) == 0 {
		t.Errorf("no key left after the scan of %v: ctx ended too late to show anything", ended)
	}
}
