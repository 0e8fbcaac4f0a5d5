package daemon

import (
	"reflect"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

func TestLeavesChanged(t *testing.T) {
	prev := replication.BoundTable{
		Leaves:    map[uint32]uint32{1: 10, 2: 20, 3: 30},
		LeafNames: map[uint32]string{1: "public.a", 2: "public.b", 3: "public.c"},
	}
	tests := []struct {
		name   string
		leaves map[uint32]uint32
		want   []string
	}{
		{"unchanged", map[uint32]uint32{1: 10, 2: 20, 3: 30}, nil},
		{"a new leaf only", map[uint32]uint32{1: 10, 2: 20, 3: 30, 4: 40}, nil},
		{"truncated", map[uint32]uint32{1: 11, 2: 20, 3: 30}, []string{"public.a truncated or rewritten"}},
		{"detached and truncated", map[uint32]uint32{1: 10, 3: 31},
			[]string{"public.b detached or dropped", "public.c truncated or rewritten"}},
	}
	for _, tt := range tests {
		got := leavesChanged(prev, replication.BoundTable{Leaves: tt.leaves})
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: leavesChanged = %q, want %q", tt.name, got, tt.want)
		}
	}
}
