package replication

import (
	"strings"
	"testing"
)

// A history file of timeline 3 as PostgreSQL writes it (timeline.c): a
// line per ancestor, then a blank line before the next.
func TestTimelineEnd(t *testing.T) {
	history := []byte("1\t0/3000148\tno recovery target specified\n\n2\t0/5000A28\tno recovery target specified\n")
	for _, tc := range []struct {
		old   uint32
		want  string
		found bool
	}{
		{1, "0/3000148", true},
		{2, "0/5000A28", true},
		{3, "0/0", false},
	} {
		end, found, err := timelineEnd(history, tc.old)
		if err != nil || found != tc.found || end.String() != tc.want {
			t.Errorf("timeline %d: %s %v %v, want %s %v", tc.old, end, found, err, tc.want, tc.found)
		}
	}
	if _, _, err := timelineEnd([]byte("x\t0/1\n"), 1); err == nil {
		t.Error("a malformed line gave no error")
	}
}

func TestCopyProblems(t *testing.T) {
	if got := copyProblems("on", "on", "standby1", []byte("true")); len(got) != 0 {
		t.Errorf("a standby set up for slot synchronization: %q", got)
	}
	got := copyProblems("off", "off", "", []byte("false"))
	for i, want := range []string{"sync_replication_slots", "hot_standby_feedback", "primary_slot_name", "dbname"} {
		if i >= len(got) || !strings.HasPrefix(got[i], want) && !strings.Contains(got[i], want) {
			t.Errorf("problem %d: %q, want one about %s", i, got, want)
		}
	}
	if got := copyProblems("on", "on", "s", nil); len(got) != 0 {
		t.Errorf("primary_conninfo unreadable is not judged: %q", got)
	}
}
