package daemon

import (
	"fmt"
	"slices"
	"testing"
	"time"

	pginvalidator "github.com/pg-invalidator/pg-invalidator"
)

// TestStreamedTxOrder: a streamed transaction's commands are replayed each
// once while in memory, in the order first seen, the spilled ones first;
// once the set outgrows its limit the Del commands go to the file, and the
// Incr command, which must change once, stays in memory.
func TestStreamedTxOrder(t *testing.T) {
	for _, limit := range []int{1 << 20, 1_000} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			tx := newStreamedTx(1, limit, time.Now())
			defer tx.close()
			var want []string
			incr := pginvalidator.Command{Action: pginvalidator.Incr, Key: "counter"}
			for i := range 100 {
				del := pginvalidator.Command{Action: pginvalidator.Del, Key: fmt.Sprintf("item:%d", i)}
				cmds := []pginvalidator.Command{del, del}
				if i%10 == 0 {
					cmds = append(cmds, incr)
				}
				if err := tx.add(cmds); err != nil {
					t.Fatal(err)
				}
				want = append(want, del.Key)
			}
			var got []string
			incrs := 0
			err := tx.replay(7, func(cmds []pginvalidator.Command) error {
				if len(cmds) > 7 {
					t.Errorf("replay handed %d commands, want at most 7", len(cmds))
				}
				for _, c := range cmds {
					if c.Action == pginvalidator.Incr {
						incrs++
						continue
					}
					got = append(got, c.Key)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			spilled := tx.spilled() > 0
			if spilled != (limit < 1<<20) {
				t.Errorf("spilled %d bytes with a limit of %d", tx.spilled(), limit)
			}
			if !spilled {
				if !slices.Equal(got, want) {
					t.Errorf("replayed %v, want %v", got, want)
				}
			} else if !slices.IsSortedFunc(dedupe(got), func(a, b string) int { return idOf(a) - idOf(b) }) {
				t.Errorf("replayed out of order: %v", got)
			}
			if !slices.Equal(dedupe(got), want) {
				t.Errorf("replayed keys %v, want each of %v", got, want)
			}
			if incrs != 1 {
				t.Errorf("the incr command was replayed %d times, want once", incrs)
			}
		})
	}
}

// dedupe drops the repeats of a key that was spilled more than once, keeping
// its first place.
func dedupe(keys []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

func idOf(key string) int {
	var id int
	fmt.Sscanf(key, "item:%d", &id)
	return id
}
