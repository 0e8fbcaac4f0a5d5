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

// TestReadingRoundTrip: what a daemon saves is what the next one compares
// with, and the same reading saves as the same text, so that an unchanged
// catalog is not saved again. HasData is not saved.
func TestReadingRoundTrip(t *testing.T) {
	seen := map[string]seenTable{
		"public.events": {BoundTable: replication.BoundTable{OID: 10, Published: true, Partitioned: true,
			Leaves: map[uint32]replication.Leaf{11: {Name: "public.events_eu", Filenode: 111}, 12: {Name: "public.events_us", Filenode: 112}}}},
		"public.products": {BoundTable: replication.BoundTable{OID: 20}, problem: "not covered", identity: "weak"},
		"public.gone":     {},
	}
	enc := encodeReading(seen)
	got, err := decodeReading(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, seen) {
		t.Errorf("decodeReading(encodeReading(seen)) = %+v, want %+v", got, seen)
	}
	for range 5 {
		if again := encodeReading(got); again != enc {
			t.Fatalf("the same reading encodes as %s, then as %s", enc, again)
		}
	}
	withData := map[string]seenTable{"public.events": seen["public.events"]}
	withData["public.events"].Leaves[11] = replication.Leaf{Name: "public.events_eu", Filenode: 111, HasData: true}
	if encodeReading(withData) != encodeReading(map[string]seenTable{"public.events": got["public.events"]}) {
		t.Error("HasData changes the saved reading")
	}
	if _, err := decodeReading("{not json"); err == nil {
		t.Error("decodeReading of a broken text: no error")
	}
}
