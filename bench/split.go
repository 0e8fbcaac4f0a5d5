package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
)

// Split is the split scenario: one backlog of single-row UPDATEs, half on
// items and half on other, drained once by one daemon whose rules cover
// both tables, and once by two daemons at the same time, each on its own
// slot and publication with the rules of one table. Every slot decodes
// the whole WAL, so the question is what the second slot costs.
type Split struct {
	Transactions int        `json:"transactions"`
	WALBytes     int64      `json:"wal_bytes"`
	Runs         []SplitRun `json:"runs"`
}

// SplitRun is one way of draining the backlog.
type SplitRun struct {
	Layout  string  `json:"layout"` // "one daemon, both tables" or "two daemons, one table each"
	Seconds float64 `json:"seconds"`
	// Per slot: the time until its confirmed position reached the end, its
	// walsender's CPU and its daemon's CPU.
	Slots   []SplitSlot `json:"slots"`
	LoadAvg float64     `json:"load_avg"`
}

// SplitSlot is one daemon and its slot in a SplitRun.
type SplitSlot struct {
	Tables       string  `json:"tables"`
	Seconds      float64 `json:"seconds"`
	WalsenderCPU float64 `json:"walsender_cpu_seconds"`
	DaemonCPU    float64 `json:"daemon_cpu_seconds"`
}

// split runs the split scenario, each layout -runs times, interleaved.
func (e *env) split(ctx context.Context) ([]Split, error) {
	for _, sql := range []string{
		`CREATE PUBLICATION bench_items FOR TABLE public.items WITH (publish = 'insert, update, delete, truncate')`,
		`CREATE PUBLICATION bench_other FOR TABLE public.other WITH (publish = 'insert, update, delete, truncate')`,
	} {
		if _, err := e.conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("split: %s: %w", firstLine(sql), err)
		}
	}
	start, err := e.createSlot(ctx, "bench_split")
	if err != nil {
		return nil, err
	}
	defer e.dropSlot(context.Background(), "bench_split")
	pgbench, err := pgTool("pgbench")
	if err != nil {
		return nil, err
	}
	a, b := filepath.Join(e.tmp, "split_items.sql"), filepath.Join(e.tmp, "split_other.sql")
	os.WriteFile(a, []byte(fmt.Sprintf("\\set id random(1, %d)\nUPDATE items SET v = v + 1 WHERE id = :id;\n", e.o.largeRows)), 0o644)
	os.WriteFile(b, []byte(fmt.Sprintf("\\set id random(1, %d)\nUPDATE other SET v = v + 1 WHERE id = :id;\n", otherRows)), 0o644)
	e.step("split: writing %d single-row UPDATEs, half on items, half on other", e.o.smallTxs)
	per := max(e.o.smallTxs/e.o.clients, 1)
	cmd := exec.CommandContext(ctx, pgbench, "-n", "-M", "prepared", "-f", a+"@1", "-f", b+"@1",
		"-c", strconv.Itoa(e.o.clients), "-j", "2", "-t", strconv.Itoa(per),
		"-h", "127.0.0.1", "-p", strconv.Itoa(e.pg.Port), "-U", "postgres", "postgres")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgbench: %w: %s", err, bytes.TrimSpace(out))
	}
	var end pglogrepl.LSN
	if err := e.conn.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()`).Scan(&end); err != nil {
		return nil, err
	}
	sp := Split{Transactions: per * e.o.clients, WALBytes: int64(end - start)}

	type daemonSpec struct{ tables, pub string }
	layouts := []struct {
		name    string
		daemons []daemonSpec
	}{
		{"one daemon, both tables", []daemonSpec{{"items, other", publication}}},
		{"two daemons, one table each", []daemonSpec{{"items", "bench_items"}, {"other", "bench_other"}}},
	}
	for round := range e.o.runs {
		for _, l := range layouts {
			var slots []string
			for i := range l.daemons {
				s := fmt.Sprintf("bench_split_%d_%d_%d", len(l.daemons), i, round)
				if err := e.copySlot(ctx, "bench_split", s); err != nil {
					return nil, err
				}
				slots = append(slots, s)
			}
			run := SplitRun{Layout: l.name, LoadAvg: loadAvg()}
			e.step("split: %s, run %d of %d (load %.2f)", l.name, round+1, e.o.runs, run.LoadAvg)
			var children []*child
			t0 := time.Now()
			for i, d := range l.daemons {
				rules := filepath.Join(e.tmp, slots[i]+".toml")
				body := fmt.Sprintf("[postgres]\nslot = %q\npublication = %q\n", slots[i], d.pub)
				if d.tables != "other" {
					body += "\n[[rule]]\ntable = \"public.items\"\ndel   = [\"item:<id>\", \"items:cat:<cat>\"]\n"
				}
				if d.tables != "items" {
					body += "\n[[rule]]\ntable = \"public.other\"\ndel   = [\"other:<id>\"]\n"
				}
				if err := os.WriteFile(rules, []byte(body), 0o644); err != nil {
					return nil, err
				}
				c, err := startChild(e.daemon, filepath.Join(e.tmp, slots[i]+".log"), "run", "--config", rules,
					"--postgres", e.pg.URL(), "--redis", e.redis.URL())
				if err != nil {
					return nil, err
				}
				defer c.stop()
				children = append(children, c)
				run.Slots = append(run.Slots, SplitSlot{Tables: d.tables})
			}
			wal := make([]procStat, len(slots))
			done := 0
			for done < len(slots) {
				if time.Since(t0) > 10*time.Minute {
					return nil, fmt.Errorf("split: not drained after 10 minutes")
				}
				for i, s := range slots {
					if run.Slots[i].Seconds > 0 {
						continue
					}
					if children[i].exited() {
						return nil, children[i].failure()
					}
					lsn, pid, err := e.slotState(ctx, s)
					if err != nil {
						return nil, err
					}
					if p, ok := readProc(pid); pid != 0 && ok {
						wal[i] = p
					}
					if lsn >= end {
						run.Slots[i].Seconds = time.Since(t0).Seconds()
						run.Slots[i].WalsenderCPU = wal[i].cpu
						if p, ok := readProc(children[i].pid()); ok {
							run.Slots[i].DaemonCPU = p.cpu
						}
						done++
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
			run.Seconds = time.Since(t0).Seconds()
			for i, c := range children {
				c.stop()
				e.dropSlot(context.Background(), slots[i])
			}
			e.step("split: %s took %.2fs: %v", l.name, run.Seconds, run.Slots)
			sp.Runs = append(sp.Runs, run)
		}
	}
	return []Split{sp}, nil
}
