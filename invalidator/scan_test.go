package invalidator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
	"github.com/pg-invalidator/pg-invalidator/internal/localsvc"
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
			"{owned:[[0 5460] [10923 10923] [16000 16383]] epoch:1 importing:[] migrating:[]}"},
		{"migrating and importing slots are not owned", "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30001@31001 myself,master - 0 0 7 connected 0-101 [101->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca] [102-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca] [16383-<-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]\n",
			"{owned:[[0 101]] epoch:7 importing:[102 16383] migrating:[101]}"},
		{"a node that has not joined", "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 :30001@31001 myself,master - 0 0 0 connected\n",
			"{owned:[] epoch:0 importing:[] migrating:[]}"},
		{"no myself line", other, "{owned:[] epoch:0 importing:[] migrating:[]}"},
		{"a replica", "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 myself,slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n" + other,
			"{owned:[] epoch:4 importing:[] migrating:[]}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fmt.Sprintf("%+v", myself(tt.nodes)); got != tt.want {
				t.Errorf("myself = %s, want %s", got, tt.want)
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
	clusterSet(t, rdb, 0, numbered("cut:", 300)...)
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

	err := inv.Apply(ctx, batchOf(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: "cut:*"}))
	t.Logf("Apply: %v", err)
	left := testenv.KeysPerMaster(t, rdb, "cut:*")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Apply = %v, with ctx ended after the scan of %v and keys left on %v; want context.Canceled", err, ended, left)
	}
	if len(left) == 0 {
		t.Errorf("no key left after the scan of %v: ctx ended too late to show anything", ended)
	}
}

// TestScanSlotMigratedToScannedMaster moves a slot that holds keys
// matching the pattern, in the middle of the scan, from a master not yet
// scanned to the master scanned first, as a resharding does (CLUSTER
// SETSLOT IMPORTING and MIGRATING, MIGRATE, then CLUSTER SETSLOT NODE on
// every master): neither master's scan finds the keys that moved, unless
// the scan reads the slot map again. In "in progress" the migration is
// under way when the scans end (the keys moved, no SETSLOT NODE yet):
// Apply must wait for it to end, then scan again. The moment comes from a
// wrapper of the real SCAN page (the seam scanPage): the last page of the
// first master scanned.
func TestScanSlotMigratedToScannedMaster(t *testing.T) {
	ctx := context.Background()
	cl := startCluster(t)
	masters := masterClients(t, cl)
	for _, tt := range []struct {
		name   string
		finish bool // the migration ends at once; otherwise once Apply says it waits for it
	}{
		{"finished", true},
		{"in progress", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prefix := "mig:" + strings.ReplaceAll(tt.name, " ", "-") + ":"
			clusterSet(t, clusterClient(t, cl), 0, numbered(prefix, 300)...)
			var logs testenv.SyncBuffer
			inv := newTopologyInvalidator(t, Options{Mode: ModeCluster, Addrs: cl.Addrs(), ScanCount: 50,
				MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, ProgressInterval: 50 * time.Millisecond,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})

			var mv *slotMove             // set by the wrapper, on the Apply goroutine
			moved := make(chan struct{}) // closed once mv is set
			inv.scanPage = func(ctx context.Context, m *redis.Client, cursor uint64, match string, count int64) ([]string, uint64, string, error) {
				keys, next, id, err := scanPage(ctx, m, cursor, match, count)
				if err == nil && next == 0 && mv == nil {
					mv = startSlotMove(t, masters, prefix, m.Options().Addr)
					if tt.finish {
						mv.finish(t)
					}
					close(moved)
				}
				return keys, next, id, err
			}

			returned := make(chan struct{}) // closed when Apply returns
			var finishedAt time.Time        // when the migration ended, in "in progress"
			finished := make(chan error, 1)
			if !tt.finish {
				go func() { // ends the migration once Apply waits for it, or has returned
					<-moved
				wait:
					for !strings.Contains(logs.String(), "waiting for a slot migration") {
						select {
						case <-returned:
							break wait
						case <-time.After(20 * time.Millisecond):
						}
					}
					finishedAt = time.Now()
					finished <- mv.end(ctx)
				}()
			}
			actx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			err := inv.Apply(actx, batchOf(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: prefix + "*"}))
			returnedAt := time.Now()
			close(returned)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.finish {
				if err := <-finished; err != nil {
					t.Fatal(err)
				}
				if returnedAt.Before(finishedAt) {
					t.Errorf("Apply returned %s before the migration ended", finishedAt.Sub(returnedAt))
				}
			}
			t.Logf("slot %d moved from %s to %s, with %v; logs:\n%s", mv.slot, mv.from.Options().Addr, mv.to.Options().Addr, mv.keys, logs.String())
			if want := `scanning a master again" addr=` + mv.to.Options().Addr; !strings.Contains(logs.String(), want) {
				t.Errorf("no log line with %q", want)
			}
			if left := clusterKeys(t, clusterClient(t, cl), prefix+"*"); len(left) > 0 {
				t.Errorf("%d keys left after the pattern: %v", len(left), left)
			}
		})
	}
}

// slotMove is a slot being moved, with its keys, from one master to
// another.
type slotMove struct {
	slot     int64
	from, to *redis.Client
	keys     []string // the keys moved
	masters  []*redis.Client
}

// startSlotMove moves the slot of a key with prefix held by a master other
// than the one at toAddr to that one, as far as MIGRATE: the slot is
// IMPORTING on the new master and MIGRATING on the old, which holds none
// of its keys any more.
func startSlotMove(t *testing.T, masters []*redis.Client, prefix, toAddr string) *slotMove {
	t.Helper()
	ctx := context.Background()
	mv := &slotMove{masters: masters}
	for _, c := range masters {
		if c.Options().Addr == toAddr {
			mv.to = c
		}
	}
	for i := 0; mv.from == nil; i++ {
		key := prefix + strconv.Itoa(i)
		for _, c := range masters {
			if c != mv.to && c.Exists(ctx, key).Val() == 1 { // the others answer MOVED
				mv.from = c
				mv.slot = c.ClusterKeySlot(ctx, key).Val()
			}
		}
	}
	fromID, toID := mv.from.ClusterMyID(ctx).Val(), mv.to.ClusterMyID(ctx).Val()
	mustDo(t, mv.to, "CLUSTER", "SETSLOT", mv.slot, "IMPORTING", fromID)
	mustDo(t, mv.from, "CLUSTER", "SETSLOT", mv.slot, "MIGRATING", toID)
	keys, err := mv.from.ClusterGetKeysInSlot(ctx, int(mv.slot), 1000).Result()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(mv.to.Options().Addr, ":")
	args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
	for _, k := range keys {
		args = append(args, k)
	}
	mustDo(t, mv.from, args...)
	mv.keys = keys
	return mv
}

// finish ends the move: the slot belongs to the new master, on every
// master.
func (mv *slotMove) finish(t *testing.T) {
	t.Helper()
	if err := mv.end(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// end is finish for any goroutine.
func (mv *slotMove) end(ctx context.Context) error {
	toID, err := mv.to.ClusterMyID(ctx).Result()
	if err != nil {
		return err
	}
	for _, c := range mv.masters {
		if err := c.Do(ctx, "CLUSTER", "SETSLOT", mv.slot, "NODE", toID).Err(); err != nil {
			return fmt.Errorf("cluster setslot %d node on %s: %w", mv.slot, c.Options().Addr, err)
		}
	}
	return nil
}

// masterClients returns a client of each node of cl that is a master now.
func masterClients(t *testing.T, cl *localsvc.RedisCluster) []*redis.Client {
	t.Helper()
	var masters []*redis.Client
	for _, n := range cl.Nodes {
		c := nodeClient(t, n.Addr())
		if info := c.Info(context.Background(), "replication").Val(); strings.Contains(info, "role:master") {
			masters = append(masters, c)
		}
	}
	return masters
}

// TestScanDoesNotBlockApply holds one Apply in a pattern scan, as a scan of
// millions of keys holds it for minutes (a scanPage wrapper blocks after
// the first page), while another goroutine applies a plain Del on the same
// Invalidator, as the daemon's pipeline does while its catalog watch
// flushes a table: the Del must be applied at once, not after the scan.
// Meanwhile Waiting reports the Apply still in progress that has waited
// longest: the scan's, blocked since before its first page.
func TestScanDoesNotBlockApply(t *testing.T) {
	ctx := context.Background()
	inv, rdb := newInvalidator(t, env.RedisURL, Options{ScanCount: 10})
	p := testenv.UniqueName() + ":"
	set(t, rdb, numbered(p+"scan:", 100)...)
	set(t, rdb, p+"live", "x")
	paged, blocked := make(chan struct{}), make(chan struct{}) // the first page is read; the scan may go on
	var pageOnce, releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(blocked) }) }
	defer release()
	inv.scanPage = func(ctx context.Context, m *redis.Client, cursor uint64, match string, count int64) ([]string, uint64, string, error) {
		keys, next, id, err := scanPage(ctx, m, cursor, match, count)
		pageOnce.Do(func() {
			close(paged)
			<-blocked
		})
		return keys, next, id, err
	}

	scanDone := applyAsync(ctx, inv, batchOf(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: p + "scan:*"}))
	select {
	case <-paged:
	case err := <-scanDone:
		t.Fatalf("the scan's Apply returned %v before its first page", err)
	}
	pagedAt := time.Now()

	liveDone := applyAsync(ctx, inv, batchOf(pginvalidator.Command{Action: pginvalidator.Del, Key: p + "live"}))
	select {
	case err := <-liveDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		release()
		t.Fatalf("the Del's Apply still blocked 10s into the scan's (%v once the scan went on)", <-liveDone)
	}
	t.Logf("the Del applied %s into the scan", time.Since(pagedAt).Round(time.Microsecond))
	if n := rdb.Exists(ctx, p+"live").Val(); n != 0 {
		t.Errorf("%slive still exists after its Apply", p)
	}
	if since, lastErr := inv.Waiting(); since.IsZero() || since.After(pagedAt) {
		t.Errorf("Waiting() = %v, %v with the scan's Apply blocked since before %v; want its since", since, lastErr, pagedAt)
	}

	release()
	if err := <-scanDone; err != nil {
		t.Fatal(err)
	}
	if left := keys(t, rdb, p+"scan:*"); len(left) > 0 {
		t.Errorf("%d keys left after the pattern: %v", len(left), left)
	}
	if since, lastErr := inv.Waiting(); !since.IsZero() || lastErr != nil {
		t.Errorf("Waiting() = %v, %v with no Apply in progress; want zero, nil", since, lastErr)
	}
}

// TestUnavailableLoggedOnceAcrossApplys keeps one Apply failing (a scanPage
// wrapper answers LOADING) while another goroutine applies batches that
// succeed: Redis is logged unavailable once, and available again once, when
// the failing Apply succeeds at last, not after each batch of the other
// goroutine, only for the failing one to log it unavailable again.
func TestUnavailableLoggedOnceAcrossApplys(t *testing.T) {
	ctx := context.Background()
	var logs testenv.SyncBuffer
	inv, rdb := newInvalidator(t, env.RedisURL, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	p := testenv.UniqueName() + ":"
	var loading atomic.Bool
	loading.Store(true)
	inv.scanPage = func(ctx context.Context, m *redis.Client, cursor uint64, match string, count int64) ([]string, uint64, string, error) {
		if loading.Load() {
			return nil, 0, "", errors.New("LOADING Redis is loading the dataset in memory")
		}
		return scanPage(ctx, m, cursor, match, count)
	}
	scanDone := applyAsync(ctx, inv, batchOf(pginvalidator.Command{Action: pginvalidator.DelPattern, Key: p + "scan:*"}))
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "redis unavailable") }, "the scan's Apply did not fail")

	for i := range 5 {
		k := p + "live:" + strconv.Itoa(i)
		set(t, rdb, k, "x")
		if err := inv.Apply(ctx, batchOf(pginvalidator.Command{Action: pginvalidator.Del, Key: k})); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // the scan's Apply retries meanwhile
	}
	loading.Store(false)
	if err := <-scanDone; err != nil {
		t.Fatal(err)
	}
	for _, msg := range []string{"redis unavailable, retrying", "redis available again"} {
		if n := strings.Count(logs.String(), msg); n != 1 {
			t.Errorf("%q logged %d times, want once; logs:\n%s", msg, n, logs.String())
		}
	}
}

// batchOf returns a batch of cmds, in one transaction.
func batchOf(cmds ...pginvalidator.Command) *Batch {
	b := NewBatch()
	for _, c := range cmds {
		b.Add(c)
	}
	b.EndTx(0)
	return b
}

// applyAsync applies b on a goroutine of its own, and returns where Apply's
// error comes.
func applyAsync(ctx context.Context, inv *Invalidator, b *Batch) <-chan error {
	done := make(chan error, 1)
	go func() { done <- inv.Apply(ctx, b) }()
	return done
}
