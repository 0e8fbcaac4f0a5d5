package daemon

import (
	"reflect"
	"testing"

	"github.com/pg-invalidator/pg-invalidator/replication"
)

func TestLeavesChanged(t *testing.T) {
	leaf := func(name string, node uint32, data bool) replication.Leaf {
		return replication.Leaf{Name: name, Filenode: node, HasData: data}
	}
	prev := replication.BoundTable{Leaves: map[uint32]replication.Leaf{
		1: leaf("public.a", 10, true), 2: leaf("public.b", 20, true), 3: leaf("public.c", 30, false)}}
	tests := []struct {
		name   string
		leaves map[uint32]replication.Leaf
		want   []string
	}{
		{"unchanged", map[uint32]replication.Leaf{1: leaf("public.a", 10, true), 2: leaf("public.b", 20, true), 3: leaf("public.c", 30, true)}, nil},
		{"a new empty leaf", map[uint32]replication.Leaf{1: leaf("public.a", 10, true), 2: leaf("public.b", 20, true),
			3: leaf("public.c", 30, false), 4: leaf("public.d", 40, false)}, nil},
		{"a new leaf with rows", map[uint32]replication.Leaf{1: leaf("public.a", 10, true), 2: leaf("public.b", 20, true),
			3: leaf("public.c", 30, false), 4: leaf("public.d", 40, true)}, []string{"public.d attached with rows"}},
		{"truncated", map[uint32]replication.Leaf{1: leaf("public.a", 11, false), 2: leaf("public.b", 20, true), 3: leaf("public.c", 30, false)},
			[]string{"public.a truncated or rewritten"}},
		{"detached and truncated", map[uint32]replication.Leaf{1: leaf("public.a", 10, true), 3: leaf("public.c", 31, false)},
			[]string{"public.b detached or dropped", "public.c truncated or rewritten"}},
	}
	for _, tt := range tests {
		got := leavesChanged(prev, replication.BoundTable{Leaves: tt.leaves})
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: leavesChanged = %q, want %q", tt.name, got, tt.want)
		}
	}
}
